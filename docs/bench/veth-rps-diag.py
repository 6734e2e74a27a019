# diag.py SETUP VARIANT...: one unpinned P1 run per variant (variant already applied by the runner's apply());
# IPIs (CAL, RES), received_rps, vpod RX packets on node 1, per-CPU softirq share, over the iperf3 run
import sys, subprocess, time, json, os, importlib.util
sys.argv=[sys.argv[0]]+sys.argv[1:]
setup=sys.argv[1]; variants=sys.argv[2:]
src=open('/work/wt/vpod-rps/docs/bench/veth-napi-runner.py').read().split('rounds=int(sys.argv[1])')[0]
g={'__name__':'diag'}; sys_argv=sys.argv; sys.argv=['/work/wt/vpod-rps/docs/bench/veth-napi-runner.py','x']; exec(compile(src,'runner','exec'),g); sys.argv=sys_argv
def ints():
    r={}
    for l in open('/proc/interrupts'):
        p=l.split()
        if p and p[0] in('CAL:','RES:'): r[p[0][:-1]]=[int(p[1]),int(p[2])]
    return r
def rps():
    return [int(l.split()[9],16) for l in open('/proc/net/softnet_stat')]
def vpodrx(ns):
    return int(subprocess.run(['ip','netns','exec',ns,'cat','/sys/class/net/vpod/statistics/rx_packets'],capture_output=True,text=True).stdout)
_,n1,p1,n2,p2,ip=g['setups'][setup]
for v in variants:
    g['apply'](setup,v); w=g['quiet']()
    srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5601'],stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    a=ints(); ra=rps(); va=vpodrx(n1); sa=g['stat'](); t0=time.time()
    out=subprocess.run(['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5601','-t','3','-J'],capture_output=True).stdout
    b=ints(); rb=rps(); vb=vpodrx(n1); sb=g['stat'](); dt=time.time()-t0; srv.wait()
    e=json.loads(out)['end']; gb=e['sum_received']['bits_per_second']/1e9
    sirq=[]; idle=[]
    for c in sorted(sa):
        d=[y-x for x,y in zip(sa[c],sb[c])]; tot=sum(d); sirq.append(100*d[6]/tot); idle.append(100*d[3]/tot)
    pk=vb-va
    print('%s %s %-6s P1 %.2f Gbit/s load %s | node1 vpod rx %d pkts | CAL %s RES %s per s | CAL per vpod pkt %.2f | received_rps %s | softirq %% %s idle %% %s'%(
        time.strftime('%H:%M:%S',time.gmtime()),setup,v,gb,open('/proc/loadavg').read().split()[0],pk,
        [round((b['CAL'][i]-a['CAL'][i])/dt) for i in (0,1)],[round((b['RES'][i]-a['RES'][i])/dt) for i in (0,1)],
        sum(b['CAL'])-sum(a['CAL']) and (sum(b['CAL'])-sum(a['CAL']))/max(pk,1),[y-x for x,y in zip(ra,rb)],['%.0f'%x for x in sirq],['%.0f'%x for x in idle]),flush=True)
g['apply'](setup,'off')
open(g['SFE'],'w').write(g['sfe0']+'\n')
