#!/usr/bin/env python3
# p4-mtu-runner.py ROUNDS SPEC...  (docs/bench/overlay-profile.md, "One
# sending thread: why native scales and the overlay does not")
# SPEC = setup[@podmtu[/ulmtu]]:STREAMS[:iperf3 args, _ for spaces]:
# weft-native@1450:4 gives both pods' eth0 MTU 1450 for the run (and
# kvxlan's flannel.1 too), /1550 also both nodes' ul0; put back after.
# Setups from $P4_DIR/setups (default /tmp/p4; p4-hold-trial.patch).
# Per run, rounds rotating the order: wait until both CPUs are >= 90 % idle
# for 0.5 s, unpinned iperf3 for 4 s (1 omitted), and over 2 s of it the
# CPU each iperf3 thread ran (schedstat), each CPU's idle share and, by
# bpftrace on the tracepoint net:net_dev_queue, the data packets the
# pods' eth0 queued (> 1000 B; the server sends only ACKs): count, average
# size, the share under 8 KiB and the commonest small sizes. Needs root,
# iperf3, bpftrace and tracefs on /sys/kernel/tracing.
import sys, json, subprocess, time, re, os
D=os.environ.get('P4_DIR','/tmp/p4')
setups={l.split()[0]:l.split() for l in open(D+'/setups')}
BT='''tracepoint:net:net_dev_queue /args->len > 1000 && str(args->name) == "eth0"/ {
  @small = sum(args->len < 8192 ? 1 : 0);
  @n = count();
  @bytes = sum(args->len);
  if (args->len < 8192) { @sz[args->len] = count(); }
}
interval:s:2 { exit(); }
'''
open(D+'/hist.bt','w').write(BT)
def setmtu(s,m,u):
    _,n1,p1,n2,p2,ip=setups[s]
    for p in (p1,p2): subprocess.run(['ip','netns','exec',p,'ip','link','set','eth0','mtu',m],check=True)
    for n in (n1,n2):
        if u: subprocess.run(['ip','netns','exec',n,'ip','link','set','ul0','mtu',u],check=True)
        if s=='kvxlan': subprocess.run(['ip','netns','exec',n,'ip','link','set','flannel.1','mtu',m],check=True)
DEF={'weft-bpf':'1450','kvxlan':'1450','weft-native':'1500','plain':'1500'}
def stat():
    r={}
    for l in open('/proc/stat'):
        if l.startswith('cpu') and l[3].isdigit():
            p=l.split(); r[p[0]]=[int(x) for x in p[1:8]]
    return r
def quiet(th=0.9,t=0.5,maxwait=180):
    t0=time.time()
    while time.time()-t0<maxwait:
        a=stat(); time.sleep(t); b=stat()
        idle=sum(b[c][3]-a[c][3] for c in a); tot=sum(sum(b[c])-sum(a[c]) for c in a)
        if tot and idle/tot>=th: return time.time()-t0
    return -1
def sch(pid):
    # run ns, wait ns, timeslices, then voluntary and involuntary switches
    try:
        r=[int(x) for x in open('/proc/%d/schedstat'%pid).read().split()]
        st=dict(l.split(':') for l in open('/proc/%d/status'%pid))
        return r+[int(st['voluntary_ctxt_switches']),int(st['nonvoluntary_ctxt_switches'])]
    except Exception: return [0,0,0,0,0]
def run(spec):
    name=spec[0]; P=spec[1]; extra=spec[2].replace('_',' ').split() if len(spec)>2 else []
    base=name.split('@')[0]
    if '@' in name:
        m,u=(name.split('@')[1].split('/')+[''])[:2]
        setmtu(base,m,u)
    try:
        _,n1,p1,n2,p2,ip=setups[base]
        srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5301'],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cli=subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5301','-P',P,'-t','4','-O','1','-J']+extra,stdout=subprocess.PIPE)
        time.sleep(1.5); a=stat(); ca=sch(cli.pid); sa=sch(srv.pid); t0=time.time()
        bt=subprocess.run(['bpftrace',D+'/hist.bt'],capture_output=True,text=True).stdout
        b=stat(); cb=sch(cli.pid); sb=sch(srv.pid); dt=time.time()-t0
        e=json.loads(cli.communicate()[0])['end']; srv.wait()
    finally:
        if '@' in name: setmtu(base,DEF[base],'1500' if u else '')
    g=e['sum_received']['bits_per_second']/1e9; retr=e['sum_sent'].get('retransmits',-1)
    idle=[]
    for c in sorted(a):
        d=[y-x for x,y in zip(a[c],b[c])]; idle.append(100*d[3]/max(1,sum(d)))
    v=lambda k: int((re.search(r'@%s: (\d+)'%k,bt) or [0,0])[1])
    sz=sorted(((int(c),int(s)) for s,c in re.findall(r'@sz\[(\d+)\]: (\d+)',bt)),reverse=True)[:3]
    n=v('n') or 1
    thr='cli run %3.0f%% sleeps %5d srv run %3.0f%% sleeps %5d'%(100*(cb[0]-ca[0])/dt/1e9,cb[3]-ca[3],100*(sb[0]-sa[0])/dt/1e9,sb[3]-sa[3])
    return thr+' %6.2f Gbit/s retr %5d idle %3.0f%% %3.0f%% | pkts %6d avg %5.0f B small %4.1f%% top %s'%(g,retr,idle[0],idle[1],n,v('bytes')/n,100*v('small')/n,' '.join('%d:%d'%(s,c) for c,s in sz))
rounds=int(sys.argv[1]); specs=[s.split(':') for s in sys.argv[2:]]
print('# %s load %s'%(time.strftime('%H:%M:%S',time.gmtime()),open('/proc/loadavg').read().split()[0]),flush=True)
for r in range(rounds):
    for i in range(len(specs)):
        s=specs[(i+r)%len(specs)]
        w=quiet()
        out=run(s)
        print('r%d %s %-20s P%s %s | load %s waited %.1f'%(r,time.strftime('%H:%M:%S',time.gmtime()),s[0]+(':'+s[2] if len(s)>2 else ''),s[1],out,open('/proc/loadavg').read().split()[0],w),flush=True)
