#!/usr/bin/env python3
# overlay-streams-runner.py ROUNDS SPEC...
# SPEC = setup[+rps]:STREAMS[:ARGS], ARGS iperf3 arguments with _ for spaces
# (weft:4:-A_0,1 pins client to CPU 0, server to CPU 1) or "procs" (STREAMS
# iperf3 pairs of one stream each); +rps sets rps_cpus 3 on both nodes'
# underlay for the run. Setups from /tmp/vx/setups (the patch
# overlay-streams-trial.patch). Rounds rotate the order. Before each run it
# waits until the machine is >= 90 % idle for 0.5 s; it reports Gbit/s,
# retransmits, each CPU's idle share, the CPU iperf3 and ksoftirqd got, and
# "foreign": the CPU everything else took during the run (other engineers'
# work on the shared machine; a run with foreign > 25 % is a loaded one).
import sys, time, subprocess, json, os
HZ=os.sysconf('SC_CLK_TCK')
KS=[int(x) for x in subprocess.run(['pgrep','ksoftirqd'],capture_output=True,text=True).stdout.split()]
setups={l.split()[0]:l.split() for l in open('/tmp/vx/setups')}
def stat():
    r={}
    for l in open('/proc/stat'):
        if l.startswith('cpu') and l[3].isdigit():
            p=l.split(); r[p[0]]=[int(x) for x in p[1:8]]
    return r
def quiet(th=0.9, t=0.5, maxwait=120):
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
def sch(pid):
    try: return [int(x) for x in open('/proc/%d/schedstat'%pid).read().split()]
    except Exception: return [0,0,0]
def rps(name,mask):
    _,n1,p1,n2,p2,ip=setups[name]
    for n in (n1,n2):
        subprocess.run(['ip','netns','exec',n,'sh','-c','for q in /sys/class/net/ul0/queues/rx-*; do echo %s > $q/rps_cpus; done'%mask],check=True)
def run(name,P,cc,secs=3):
    base=name.split('+')[0]
    if name.endswith('+rps'): rps(base,'3')
    try: return run1(base,P,cc,secs)
    finally:
        if name.endswith('+rps'): rps(base,'0')
def runprocs(name,P,secs=3):
    _,n1,p1,n2,p2,ip=setups[name]
    srvs=[subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p',str(5401+i)],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL) for i in range(P)]
    time.sleep(0.3)
    clis=[subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p',str(5401+i),'-t',str(secs),'-O','1','-J'],stdout=subprocess.PIPE) for i in range(P)]
    pids=[p.pid for p in srvs+clis]
    time.sleep(1.2)
    a=stat(); ta=sum(ptime(p) for p in pids); ka=sum(ptime(k) for k in KS); t0=time.time()
    time.sleep(secs-1.4)
    b=stat(); tb=sum(ptime(p) for p in pids); kb=sum(ptime(k) for k in KS); dt=time.time()-t0
    g=0; retr=0
    for c in clis:
        e=json.loads(c.communicate()[0])['end']; g+=e['sum_received']['bits_per_second']/1e9; retr+=e['sum_sent'].get('retransmits',0)
    for s_ in srvs: s_.wait()
    idle=[]; busy=0
    for c in sorted(a):
        d=[y-x for x,y in zip(a[c],b[c])]; tot=sum(d); idle.append(100*d[3]/tot); busy+=tot-d[3]-d[4]
    global SCH; SCH='%d processes'%P
    return g,retr,idle,100*(busy-(tb-ta)-(kb-ka))/HZ/dt,100*(tb-ta)/HZ/dt,100*(kb-ka)/HZ/dt
def run1(name,P,cc,secs=3):
    if cc=='procs': return runprocs(name,P,secs)
    _,n1,p1,n2,p2,ip=setups[name]
    srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5301'],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    args=['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5301','-P',str(P),'-t',str(secs),'-O','1','-J']+(cc.replace('_',' ').split() if cc else [])
    cli=subprocess.Popen(args,stdout=subprocess.PIPE)
    time.sleep(1.2)
    a=stat(); ta=ptime(cli.pid)+ptime(srv.pid); ka=sum(ptime(k) for k in KS); ca=sch(cli.pid); sa=sch(srv.pid); t0=time.time()
    time.sleep(secs-1.4)
    b=stat(); tb=ptime(cli.pid)+ptime(srv.pid); kb=sum(ptime(k) for k in KS); cb=sch(cli.pid); sb=sch(srv.pid); dt=time.time()-t0
    out=cli.communicate()[0]; srv.wait()
    e=json.loads(out)['end']
    g=e['sum_received']['bits_per_second']/1e9; retr=e['sum_sent'].get('retransmits',-1)
    idle=[]; busy=0; sirq=0
    for c in sorted(a):
        d=[y-x for x,y in zip(a[c],b[c])]; tot=sum(d)
        idle.append(100*d[3]/tot); busy+=tot-d[3]-d[4]; sirq+=d[5]+d[6]
    ip_=(tb-ta)
    foreign=100*(busy-ip_-(kb-ka))/HZ/dt
    global SCH; SCH='cli run %3.0f%% wait %3.0f%% srv run %3.0f%% wait %3.0f%%'%(100*(cb[0]-ca[0])/dt/1e9,100*(cb[1]-ca[1])/dt/1e9,100*(sb[0]-sa[0])/dt/1e9,100*(sb[1]-sa[1])/dt/1e9)
    return g,retr,idle,foreign,100*ip_/HZ/dt,100*(kb-ka)/HZ/dt
rounds=int(sys.argv[1]); specs=[s.split(':') for s in sys.argv[2:]]
for r in range(rounds):
    for i in range(len(specs)):
        s=specs[(i+r)%len(specs)]
        w=quiet()
        name,P=s[0],int(s[1]); cc=s[2] if len(s)>2 else ''
        g,retr,idle,foreign,ipc,sq=run(name,P,cc)
        print("r%d %s %-7s P%d %-5s %6.2f Gbit/s retr %5d idle %3.0f%% %3.0f%% iperf3 %3.0f%% ksoftirqd %3.0f%% foreign %3.0f%% load %s waited %.1fs %s"%(r,time.strftime('%H:%M:%S',time.gmtime()),name,P,cc or 'def',g,retr,idle[0],idle[1],ipc,sq,foreign,open('/proc/loadavg').read().split()[0],w,SCH),flush=True)
