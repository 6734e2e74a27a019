#!/usr/bin/env python3
# p4-tx-attr.py ROUNDS SETUP[@podmtu[/ulmtu]]:STREAMS[:nt]...  (docs/bench/
# overlay-profile.md, "One sending thread: why native scales and the overlay
# does not"). Per run (quiet wait, unpinned iperf3 for 4 s, 1 omitted), over
# 2 s of it by bpftrace: the data the pods' eth0 queue (tracepoint
# net:net_dev_queue, > 1000 B), counted per CPU and per task it ran in
# (the iperf3 client "cli", the server "srv", anything else "oth", softirq
# included in the task it interrupted) and, 1 event in 8 with its kernel
# stack, split by the caller of the transmit: sendmsg (tcp_sendmsg),
# backlog (__release_sock), relcb (tcp_release_cb), softack (an ACK in
# softirq: tcp_v4_rcv), tsq (the TSQ tasklet), pace (the pacing hrtimer);
# the ACKs the client's sockets take (tcp:tcp_probe, no data), same split;
# and both pods' TCP counters (/proc/net/netstat, snmp) over the run. "nt":
# no bpftrace. MTU variants as p4-mtu-runner.py. Setups from
# $P4_DIR/setups (default /tmp/p4; p4-hold-trial.patch).
import sys, json, subprocess, time, collections, os
D=os.environ.get('P4_DIR','/tmp/p4')
setups={l.split()[0]:l.split() for l in open(D+'/setups')}
open(D+'/tx.bt','w').write('''tracepoint:net:net_dev_queue /args->len > 1000 && str(args->name) == "eth0"/ {
  $w = pid == $1 ? "cli" : (pid == $2 ? "srv" : "oth");
  @n[cpu, $w] = count();
  if ((nsecs >> 4) % 8 == 0) { @b[cpu, $w, kstack(28)] = sum(args->len); }
}
tracepoint:tcp:tcp_probe /args->data_len == 0 && (nsecs >> 4) % 8 == 0/ {
  $w = pid == $1 ? "cli" : (pid == $2 ? "srv" : "oth");
  @a[cpu, $w, kstack(12)] = count();
}
interval:s:2 { exit(); }
''')
def setmtu(s,m,u):
    _,n1,p1,n2,p2,ip=setups[s]
    for p in (p1,p2): subprocess.run(['ip','netns','exec',p,'ip','link','set','eth0','mtu',m],check=True)
    for n in (n1,n2):
        if u: subprocess.run(['ip','netns','exec',n,'ip','link','set','ul0','mtu',u],check=True)
        if s=='kvxlan': subprocess.run(['ip','netns','exec',n,'ip','link','set','flannel.1','mtu',m],check=True)
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
def cls(st):
    if 'tcp_pace_kick' in st or 'hrtimer' in st: return 'pace'
    if 'tcp_tasklet_func' in st or 'tasklet_action' in st: return 'tsq'
    if 'tcp_release_cb' in st: return 'relcb'
    if '__release_sock' in st: return 'backlog'
    if 'tcp_v4_rcv' in st or 'tcp_v6_rcv' in st: return 'softack'
    if 'tcp_sendmsg' in st: return 'sendmsg'
    return 'other'
DEF={'weft-bpf':'1450','kvxlan':'1450','weft-native':'1500','plain':'1500'}
def run(name,P,trace=True,extra=[]):
    if '@' in name:
        base,m=name.split('@'); m,u=(m.split('/')+[''])[:2]
        setmtu(base,m,u)
        try: return run0(base,P,trace,extra)
        finally: setmtu(base,DEF[base],'1500' if u else '')
    return run0(name,P,trace,extra)
def snmp(ns):
    out=subprocess.run(['ip','netns','exec',ns,'cat','/proc/net/netstat','/proc/net/snmp'],capture_output=True,text=True).stdout.splitlines()
    r={}
    for h,v in zip(out[0::2],out[1::2]):
        hh=h.split(); vv=v.split()
        for a,b in zip(hh[1:],vv[1:]):
            try: r[hh[0][:-1]+a]=int(b)
            except ValueError: pass
    return r
KEYS=os.environ.get('KEYS','TcpInSegs TcpOutSegs TcpExtTCPBacklogCoalesce TcpExtTCPRcvCoalesce TcpExtTCPHPHits TcpExtTCPPureAcks TcpExtTCPHPAcks TcpExtTCPOFOQueue TcpExtTCPAutoCorking TcpExtTCPDelayedAck TcpExtDelayedACKs TcpExtTCPSACKReorder TcpExtTCPOrigDataSent TcpExtTCPBacklogDrop TcpExtTCPRcvQDrop TcpExtPruneCalled TcpExtTCPWantZeroWindowAdv TcpExtTCPToZeroWindowAdv').split()
def run0(name,P,trace=True,extra=[]):
    _,n1,p1,n2,p2,ip=setups[name]
    s1a=snmp(p1); s2a=snmp(p2)
    srv=subprocess.Popen(['ip','netns','exec',p2,'iperf3','-s','-1','-B',ip,'-p','5301'],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    cli=subprocess.Popen(['ip','netns','exec',p1,'iperf3','-c',ip,'-p','5301','-P',str(P),'-t','4','-O','1','-J']+extra,stdout=subprocess.PIPE)
    time.sleep(1.5)
    a=stat()
    bt=None
    if trace:
        bt=subprocess.run(['bpftrace','-f','json',D+'/tx.bt',str(cli.pid),str(srv.pid)],capture_output=True,text=True)
    else:
        time.sleep(2)
    b=stat()
    e=json.loads(cli.communicate()[0])['end']; srv.wait()
    g=e['sum_received']['bits_per_second']/1e9; retr=e['sum_sent'].get('retransmits',-1)
    idle=[]
    for c in sorted(a):
        d=[y-x for x,y in zip(a[c],b[c])]; idle.append(100*d[3]/max(1,sum(d)))
    s1b=snmp(p1); s2b=snmp(p2)
    res={'g':g,'retr':retr,'idle':idle}
    res['snmp']='cli '+' '.join('%s=%d'%(k.replace('TcpExt',''),s1b[k]-s1a[k]) for k in KEYS if s1b.get(k,0)-s1a.get(k,0))+' | srv '+' '.join('%s=%d'%(k.replace('TcpExt',''),s2b[k]-s2a[k]) for k in KEYS if s2b.get(k,0)-s2a.get(k,0))
    if bt:
        B=collections.Counter(); A=collections.Counter(); N=collections.Counter(); lost=bt.stderr.count('stack id')
        for line in bt.stdout.splitlines():
            if not line.startswith('{'): continue
            j=json.loads(line)
            if j.get('type')!='map': continue
            for m,d in j['data'].items():
                for k,v in d.items():
                    if m=='@n': N[k]+=v; continue
                    cpu,who,st=k.split(',',2)
                    (B if m=='@b' else A)[(who,cls(st))]+=v
        res['B']=B; res['A']=A; res['N']=N; res['lost']=lost
    return res
def fmt(C):
    tot=sum(C.values()) or 1
    return ' '.join('%s:%s %2.0f%%'%(c,k,100*v/tot) for (c,k),v in sorted(C.items()) if 100*v/tot>=0.5)
rounds=int(sys.argv[1]); specs=[s.split(':') for s in sys.argv[2:]]
for r in range(rounds):
    for i in range(len(specs)):
        s=specs[(i+r)%len(specs)]
        name=s[0]; P=int(s[1]) if len(s)>1 else 4; tr=not (len(s)>2 and s[2]=='nt')
        w=quiet()
        x=run(name,P,tr)
        print('r%d %s %-12s P%d %6.2f Gbit/s retr %5d idle %3.0f%% %3.0f%% load %s waited %.1f'%(r,time.strftime('%H:%M:%S',time.gmtime()),name,P,x['g'],x['retr'],x['idle'][0],x['idle'][1],open('/proc/loadavg').read().split()[0],w),flush=True)
        print('   '+x['snmp'],flush=True)
        if 'B' in x:
            nb=sum(x['B'].values()); nn=sum(x['N'].values()) or 1
            print('   pkts/cpu,who %s'%dict(x['N']))
            print('   data bytes: '+fmt(x['B'])+'  | acks: '+fmt(x['A'])+(' lost %d'%x['lost'] if x['lost'] else ''),flush=True)
