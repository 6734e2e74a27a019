#!/usr/bin/env python3
# veth-napi-runner.py ROUNDS SETUP[,SETUP...] VARIANT[,VARIANT...] MEAS[,MEAS...]
# veth-napi-runner.py gro DEV [on|off|-] [tso on|off]   (in a namespace: ip netns exec NS ...)
#
# The trials of docs/bench/overlay-profile.md, "NAPI on the pod veths" and
# "RPS on the pod veths".
# Setups from $WEFT_NAPI_DIR/setups (veth-napi-trial.patch: BenchmarkNapiHold);
# the XDP_PASS tool of the same patch built as $WEFT_NAPI_DIR/xdppass, the bpf
# package's test binary as $WEFT_NAPI_DIR/bpf.test (the RR client and server).
# Combinations (setup, variant) rotate per round; before each measurement
# it waits until both CPUs are >= 90 % idle for 0.5 s (at most 60 s:
# "waited -1.0s" is a run that never saw a quiet window).
# VARIANT, set on both nodes (vpod: the host end of the pod's veth; eth0: the pod end):
#   off        as weft-cni leaves it (GRO off, TSO on, noqueue)
#   host       GRO on vpod (veth NAPI) + /sys/class/net/vpod/threaded 1
#   hostnt     the same, NAPI not threaded
#   pod        GRO + threaded on the pods' eth0
#   both       host + pod
#   tso        TSO off on the pods' eth0 (control: no NAPI)
#   hosttso    TSO off + pfifo (backpressure) on the pods' eth0, GRO + threaded on vpod
#   hostnttso  the same, NAPI not threaded
#   xdp        an XDP_PASS program (frags-aware) on vpod + threaded (veth NAPI for
#              every packet; the kernel takes GSO off the pod's eth0 meanwhile)
#   rps        RPS on vpod: rps_cpus 3 (either CPU, by the flow's hash) on rx-0
#              (overlay-profile.md, "RPS on the pod veths")
#   rfs        the same + RFS: rps_flow_cnt 4096 on vpod's rx-0 and the host's
#              net.core.rps_sock_flow_entries 32768 (global; put back after)
#   rpsall     rps on vpod and on the pods' eth0
# The directory of setups and tools: $WEFT_NAPI_DIR (default /tmp/napi).
# MEAS: p1 | p4 | p4x (4 pairs) unpinned iperf3 3 s (1 s omitted); pin: P1 with
#   client and server on CPU 0; rr: the busy-polled request/response of
#   BenchmarkPodToPod (median of 5,000, client CPU 0, server CPU 1).
# Per iperf3 run: Gbit/s, retransmits, each CPU's idle share, "busy" (CPU-s
# per s of both CPUs, everyone's) and "ours" (iperf3 + ksoftirqd + napi/*
# threads; with tick accounting softirq time is charged to the task it
# interrupted), and Gbit per busy CPU-s.
import sys, time, subprocess, json, os
HZ=os.sysconf('SC_CLK_TCK')
def gro(argv):
    # read or set GRO (and TSO) with the legacy ethtool ioctls (no ethtool binary here)
    import socket, fcntl, struct, array
    SIOCETHTOOL=0x8946; GGRO=0x2b; SGRO=0x2c; GTSO=0x1e; STSO=0x1f
    dev=argv[0]; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    def call(cmd,val=0):
        buf=array.array('B', struct.pack('II',cmd,val))
        fcntl.ioctl(s, SIOCETHTOOL, struct.pack('16sP', dev.encode(), buf.buffer_info()[0]))
        return struct.unpack('II', buf.tobytes())[1]
    if len(argv)>1 and argv[1]!='-': call(SGRO, 1 if argv[1]=='on' else 0)
    if len(argv)>3: call(STSO, 1 if argv[3]=='on' else 0)
    print(dev, 'gro', 'on' if call(GGRO) else 'off', 'tso', 'on' if call(GTSO) else 'off')
if __name__=='__main__' and sys.argv[1]=='gro':
    gro(sys.argv[2:]); sys.exit(0)
SELF=os.path.abspath(sys.argv[0])
D=os.environ.get('WEFT_NAPI_DIR','/tmp/napi')
setups={l.split()[0]:l.split() for l in open(D+'/setups')}
SFE='/proc/sys/net/core/rps_sock_flow_entries'
sfe0=open(SFE).read().strip()
def setrps(ns,dev,cpus,flows):
    nsx(ns,'echo %x > /sys/class/net/%s/queues/rx-0/rps_cpus; echo %d > /sys/class/net/%s/queues/rx-0/rps_flow_cnt'%(cpus,dev,flows,dev))
def stat():
    r={}
    for l in open('/proc/stat'):
        if l.startswith('cpu') and l[3].isdigit():
            p=l.split(); r[p[0]]=[int(x) for x in p[1:8]]
    return r
def quiet(th=0.9, t=0.5, maxwait=60):
    t0=time.time()
    while time.time()-t0<maxwait:
        a=stat(); time.sleep(t); b=stat()
        idle=sum(b[c][3]-a[c][3] for c in a); tot=sum(sum(b[c])-sum(a[c]) for c in a)
        if tot and idle/tot>=th: return time.time()-t0
    return -1
def ptime(pid):
    try:
        p=open('/proc/%d/stat'%pid).read().rsplit(')',1)[1].split(); return int(p[11])+int(p[12])
    except Exception: return 0
def kthreads():
    out=subprocess.run(['ps','-eo','pid,comm'],capture_output=True,text=True).stdout.split('\n')[1:]
    return [int(l.split()[0]) for l in out if l.strip() and (l.split()[1].startswith('ksoftirqd') or l.split()[1].startswith('napi/'))]
def nsx(ns,cmd): subprocess.run(['ip','netns','exec',ns,'sh','-c',cmd],check=True)
def setveth(ns,dev,gro,thr):
    # threaded off before GRO off; GRO on before threaded on
    if not gro: subprocess.run(['ip','netns','exec',ns,'sh','-c','echo 0 > /sys/class/net/%s/threaded'%dev],stderr=subprocess.DEVNULL)
    subprocess.run(['ip','netns','exec',ns,'python3',SELF,'gro',dev,'on' if gro else 'off'],check=True,capture_output=True)
    if gro: nsx(ns,'echo %d > /sys/class/net/%s/threaded'%(1 if thr else 0,dev))
def apply(name,v):
    _,n1,p1,n2,p2,ip=setups[name]
    host=v in('host','hostnt','both','hosttso','hostnttso'); pod=v in('pod','both'); thr='nt' not in v
    tsooff=v in('tso','hosttso','hostnttso'); q=v in('hosttso','hostnttso')
    rps=v in('rps','rfs','rpsall')
    open(SFE,'w').write('32768\n' if v=='rfs' else sfe0+'\n')
    for n in (n1,n2): setrps(n,'vpod',3 if rps else 0,4096 if v=='rfs' else 0)
    for p in (p1,p2): setrps(p,'eth0',3 if v=='rpsall' else 0,0)
    for n in (n1,n2):
        if v=='xdp':
            subprocess.run(['ip','netns','exec',n,D+'/xdppass','vpod','attach'],check=True,capture_output=True)
            nsx(n,'echo 1 > /sys/class/net/vpod/threaded')
        else:
            subprocess.run(['ip','netns','exec',n,'sh','-c','echo 0 > /sys/class/net/vpod/threaded'],stderr=subprocess.DEVNULL)
            subprocess.run(['ip','netns','exec',n,D+'/xdppass','vpod','detach'],check=True,capture_output=True)
            setveth(n,'vpod',host,thr)
    for p in (p1,p2):
        setveth(p,'eth0',pod,thr)
        if v!='xdp': subprocess.run(['ip','netns','exec',p,'python3',SELF,'gro','eth0','-','tso','off' if tsooff else 'on'],check=True,capture_output=True)
        if q: subprocess.run(['ip','netns','exec',p,'tc','qdisc','replace','dev','eth0','root','pfifo','limit','1000'],check=True)
        else: subprocess.run(['ip','netns','exec',p,'tc','qdisc','del','dev','eth0','root'],stderr=subprocess.DEVNULL)
def window(pids,secs):
    time.sleep(1.2)
    ks=kthreads()
    a=stat(); ta=sum(ptime(p) for p in pids); ka=sum(ptime(k) for k in ks); t0=time.time()
    time.sleep(secs-1.4)
    b=stat(); tb=sum(ptime(p) for p in pids); kb=sum(ptime(k) for k in ks+[k for k in kthreads() if k not in ks]); dt=time.time()-t0
    idle=[]; busy=0
    for c in sorted(a):
        d=[y-x for x,y in zip(a[c],b[c])]; tot=sum(d); idle.append(100*d[3]/tot); busy+=tot-d[3]-d[4]
    return dict(idle=idle, busy=busy/HZ/dt, ours=((tb-ta)+(kb-ka))/HZ/dt)
def iperf(name,P,pin=False,procs=False,secs=3):
    _,n1,p1,n2,p2,ip=setups[name]
    n=P if procs else 1
    srvs=[subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p',str(5501+i)]+(['-A','0'] if pin else []),stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL) for i in range(n)]
    time.sleep(0.3)
    clis=[subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p',str(5501+i),'-t',str(secs),'-O','1','-J']+(['-P',str(P)] if not procs else [])+(['-A','0'] if pin else []),stdout=subprocess.PIPE) for i in range(n)]
    w=window([p.pid for p in srvs+clis],secs)
    g=0; retr=0
    for c in clis:
        e=json.loads(c.communicate()[0])['end']; g+=e['sum_received']['bits_per_second']/1e9; retr+=e['sum_sent'].get('retransmits',0)
    for s_ in srvs: s_.wait()
    w['g']=g; w['retr']=retr
    return w
def rr(name,count=5000):
    _,n1,p1,n2,p2,ip=setups[name]
    env=dict(os.environ, WEFT_BENCH_RR_ADDR=ip+':5202', WEFT_BENCH_RR_COUNT=str(count))
    srv=subprocess.Popen(['ip','netns','exec',p2,'taskset','-c','1',D+'/bpf.test'],env=dict(env,WEFT_BENCH_RR='server'),stdout=subprocess.PIPE)
    assert srv.stdout.readline()==b'ready\n'
    out=subprocess.run(['ip','netns','exec',p1,'taskset','-c','0',D+'/bpf.test'],env=dict(env,WEFT_BENCH_RR='client'),capture_output=True,check=True).stdout
    srv.wait()
    s=sorted(json.loads(out)); return dict(us=s[len(s)//2])
rounds=int(sys.argv[1]); sl=sys.argv[2].split(','); vl=sys.argv[3].split(','); ml=sys.argv[4].split(',')
combos=[(s,v) for s in sl for v in vl]
for r in range(rounds):
    for i in range(len(combos)):
        s,v=combos[(i+r)%len(combos)]
        apply(s,v)
        for m in ml:
            w=quiet()
            t=time.strftime('%H:%M:%S',time.gmtime()); load=open('/proc/loadavg').read().split()[0]
            if m=='rr':
                x=rr(s); print("r%d %s %-11s %-6s %-4s %6.1f us load %s waited %.1fs"%(r,t,s,v,m,x['us'],load,w),flush=True); continue
            x=iperf(s,4 if m in('p4','p4x') else 1,pin=(m=='pin'),procs=(m=='p4x'))
            print("r%d %s %-11s %-6s %-4s %6.2f Gbit/s retr %6d idle %3.0f%% %3.0f%% busy %.2f CPU ours %.2f Gbit/CPU-s %5.2f load %s waited %.1fs"%(r,t,s,v,m,x['g'],x['retr'],x['idle'][0],x['idle'][1],x['busy'],x['ours'],x['g']/max(x['busy'],0.01),load,w),flush=True)
    for s in sl: apply(s,'off')
open(SFE,'w').write(sfe0+'\n')
