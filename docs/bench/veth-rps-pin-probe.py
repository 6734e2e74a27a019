#!/usr/bin/env python3
# veth-rps-pin-probe.py ROUNDS   (WEFT_NAPI_DIR as for veth-napi-runner.py)
#
# The best case of RPS on the pod veths (docs/bench/overlay-profile.md, "RPS
# on the pod veths"): the iperf3 client pinned to CPU 0 (server free) and
# vpod's rps_cpus 2 (CPU 1 only) on both nodes, so the sender's CPU keeps
# TCP and the copy and the other runs the path, against the same pinning
# without RPS; P1 and P4 on weft-bpf, kvxlan and plain, per run Gbit/s,
# retransmits, each CPU's idle share and Gbit per busy CPU-second.
import sys, os, subprocess, time, json
RUNNER=os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])),'veth-napi-runner.py')
src=open(RUNNER).read().split('rounds=int(sys.argv[1])')[0]
g={'__name__':'x'}; argv=sys.argv; sys.argv=[RUNNER,'x']; exec(compile(src,RUNNER,'exec'),g); sys.argv=argv
for r in range(int(sys.argv[1])):
  for s in ['weft-bpf','kvxlan','plain']:
    _,n1,p1,n2,p2,ip=g['setups'][s]
    for v in ['off','cpu1']:
      for n in (n1,n2): g['setrps'](n,'vpod',2 if v=='cpu1' else 0,0)
      for P in (1,4):
        w=g['quiet']()
        srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5701'],stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        cli=subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5701','-t','3','-O','1','-J','-A','0','-P',str(P)],stdout=subprocess.PIPE)
        x=g['window']([srv.pid,cli.pid],3)
        e=json.loads(cli.communicate()[0])['end']; srv.wait(); gb=e['sum_received']['bits_per_second']/1e9
        print('r%d %s %-8s %-5s P%d %6.2f Gbit/s retr %6d idle %3.0f%% %3.0f%% busy %.2f Gbit/CPU-s %5.2f load %s waited %.1fs'%(r,time.strftime('%H:%M:%S',time.gmtime()),s,v,P,gb,e['sum_sent'].get('retransmits',0),x['idle'][0],x['idle'][1],x['busy'],gb/x['busy'],open('/proc/loadavg').read().split()[0],w),flush=True)
    for n in (n1,n2): g['setrps'](n,'vpod',0,0)
