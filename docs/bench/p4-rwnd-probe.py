#!/usr/bin/env python3
# p4-rwnd-probe.py ROUNDS SPEC... (SPEC as p4-mtu-runner.py, MTU of the
# pods only; docs/bench/overlay-profile.md, "One sending thread"): per run, unpinned
# iperf3 -P 4 for 5 s; at 2 and 3 s the server's data sockets' receive
# memory against their receive buffers (ss skmem r/rb, summed) and the
# client's data sockets' rwnd_limited share and smallest snd_wnd; the
# iperf3 threads' run and runnable-wait shares (schedstat) over 1.5-3.5 s.
import sys, json, subprocess, time, re, os
D=os.environ.get('P4_DIR','/tmp/p4')
setups={l.split()[0]:l.split() for l in open(D+'/setups')}
DEF={'weft-bpf':'1450','kvxlan':'1450','weft-native':'1500','plain':'1500'}
def stat():
    r={}
    for l in open('/proc/stat'):
        if l.startswith('cpu') and l[3].isdigit():
            p=l.split(); r[p[0]]=[int(x) for x in p[1:8]]
    return r
def quiet(th=0.85,t=0.5,maxwait=60):
    t0=time.time()
    while time.time()-t0<maxwait:
        a=stat(); time.sleep(t); b=stat()
        idle=sum(b[c][3]-a[c][3] for c in a); tot=sum(sum(b[c])-sum(a[c]) for c in a)
        if tot and idle/tot>=th: return time.time()-t0
    return -1
def sch(pid):
    try: return [int(x) for x in open('/proc/%d/schedstat'%pid).read().split()]
    except Exception: return [0,0,0]
def setmtu(s,m):
    _,n1,p1,n2,p2,ip=setups[s]
    for p in (p1,p2): subprocess.run(['ip','netns','exec',p,'ip','link','set','eth0','mtu',m],check=True)
def ss(ns,args):
    o=subprocess.run(['ip','netns','exec',ns,'ss']+args,capture_output=True,text=True).stdout
    return [a+b for a,b in zip(o.splitlines()[1::2],o.splitlines()[2::2])]
def run(spec):
    name=spec[0]; extra=spec[2].replace('_',' ').split() if len(spec)>2 else []
    base=name.split('@')[0]
    if '@' in name: setmtu(base,name.split('@')[1])
    try:
        _,n1,p1,n2,p2,ip=setups[base]
        srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5301'],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cli=subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5301','-P','4','-t','5','-O','1','-J']+extra,stdout=subprocess.PIPE)
        time.sleep(1.5); ca=sch(cli.pid); sa=sch(srv.pid); t0=time.time()
        fills=[]; rl=[]; wnd=[]
        for k in range(2):
            time.sleep(0.5 if k==0 else 1.0)
            r=rb=0
            for l in ss(p2,['-tim','src',ip]):
                m=re.search(r'skmem:\(r(\d+),rb(\d+)',l); br=re.search(r'bytes_received:(\d+)',l)
                if m and br and int(br[1])>10**6: r+=int(m[1]); rb+=int(m[2])
            fills.append(100*r/max(rb,1))
            for l in ss(p1,['-tin','dst',ip]):
                if 'bytes_acked' not in l: continue
                ba=re.search(r'bytes_acked:(\d+)',l)
                if int(ba[1])<10**6: continue
                m=re.search(r'rwnd_limited:\d+ms\(([\d.]+)%\)',l); rl.append(float(m[1]) if m else 0.0)
                w=re.search(r'snd_wnd:(\d+)',l)
                if w: wnd.append(int(w[1]))
        time.sleep(max(0,2.0-(time.time()-t0)))
        cb=sch(cli.pid); sb=sch(srv.pid); dt=time.time()-t0
        e=json.loads(cli.communicate()[0])['end']; srv.wait()
    finally:
        if '@' in name: setmtu(base,DEF[base])
    g=e['sum_received']['bits_per_second']/1e9
    f=lambda a,b,i: 100*(b[i]-a[i])/dt/1e9
    return '%6.2f Gbit/s | srv rmem/rcvbuf %3.0f%% %3.0f%% | cli rwnd_limited avg %4.1f%% min snd_wnd %8d | cli run %3.0f%% wait %3.0f%% srv run %3.0f%% wait %3.0f%%'%(g,fills[0],fills[1],sum(rl)/max(len(rl),1),min(wnd) if wnd else -1,f(ca,cb,0),f(ca,cb,1),f(sa,sb,0),f(sa,sb,1))
rounds=int(sys.argv[1]); specs=[s.split(':') for s in sys.argv[2:]]
print('# %s load %s'%(time.strftime('%H:%M:%S',time.gmtime()),open('/proc/loadavg').read().split()[0]),flush=True)
for r in range(rounds):
    for i in range(len(specs)):
        s=specs[(i+r)%len(specs)]
        w=quiet()
        out=run(s)
        print('r%d %s %-20s %s | load %s waited %.1f'%(r,time.strftime('%H:%M:%S',time.gmtime()),s[0]+(':'+s[2] if len(s)>2 else ''),out,open('/proc/loadavg').read().split()[0],w),flush=True)
