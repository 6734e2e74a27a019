package chaos

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/weftnet/weft/testenv"
	"github.com/weftnet/weft/testenv/netnstest"
)

// replyTimeout: a reply later than this counts as lost.
const replyTimeout = 2 * time.Second

// Pair is one direction between two pods.
type Pair struct{ From, To string }

func (p Pair) String() string { return p.From + "→" + p.To }

// Loss is one echo request that got no reply within replyTimeout.
type Loss struct {
	Pair
	At time.Time // when it was sent
}

// Mesh pings every pod from every other pod every interval, one ICMP
// socket per source pod, and records each lost request with its pair and
// send time, so a loss can be laid against the fault schedule.
type Mesh struct {
	interval time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	addrs    map[string]netip.Addr // pod → address; absent while paused
	srcs     []*source
	losses   []Loss
	sent     int
	received int
}

type source struct {
	pod string
	ns  string // the pod's namespace
	p   *netnstest.Pinger
	seq int
	// pending: seq → request, guarded by Mesh.mu.
	pending map[int]request
}

type request struct {
	to   string
	addr netip.Addr
	at   time.Time
}

// StartMesh starts pinging between all pods (each a name, namespace and
// address) every interval.
func StartMesh(pods []testenv.Target, interval time.Duration) (*Mesh, error) {
	m := &Mesh{interval: interval, stop: make(chan struct{}), addrs: map[string]netip.Addr{}}
	for _, t := range pods {
		m.addrs[t.Name] = t.Addr
	}
	for _, t := range pods {
		p, err := openPinger(t.NS)
		if err != nil {
			m.Stop()
			return nil, fmt.Errorf("start mesh: %w", err)
		}
		m.srcs = append(m.srcs, &source{pod: t.Name, ns: t.NS, p: p, pending: map[int]request{}})
	}
	for _, s := range m.srcs {
		m.wg.Add(1)
		go m.send(s)
	}
	return m, nil
}

func openPinger(ns string) (*netnstest.Pinger, error) {
	n, err := netnstest.Open(ns)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return netnstest.NewPinger(n, false)
}

// Pause stops sending to and from pods (their node left); Resume starts
// again with their new addresses.
func (m *Mesh) Pause(pods ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range pods {
		delete(m.addrs, p)
	}
}

// Resume sends to and from pods again, at addrs.
func (m *Mesh) Resume(addrs map[string]netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p, a := range addrs {
		m.addrs[p] = a
	}
}

func (m *Mesh) send(s *source) {
	defer m.wg.Done()
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.mu.Lock()
		_, active := m.addrs[s.pod]
		var to []string
		if active {
			for pod := range m.addrs {
				if pod != s.pod {
					to = append(to, pod)
				}
			}
		}
		sort.Strings(to)
		reqs := make([]struct {
			seq int
			r   request
		}, 0, len(to))
		for _, pod := range to {
			// ICMP sequence numbers are 16 bits; 0 is left out.
			s.seq = s.seq%0xffff + 1
			m.sent++
			// A late reply to the seq's last use must not count.
			s.p.Forget(s.seq)
			reqs = append(reqs, struct {
				seq int
				r   request
			}{s.seq, request{to: pod, addr: m.addrs[pod]}})
		}
		m.mu.Unlock()
		for i := range reqs {
			// Stamped just before its own send, not when the tick
			// began: a sender the scheduler holds back between two
			// sends does not make the later requests look late.
			reqs[i].r.at = time.Now()
			// A failed send is a loss too: it stays pending.
			_ = s.p.Send(reqs[i].r.addr, reqs[i].seq)
		}
		m.mu.Lock()
		for _, q := range reqs {
			s.pending[q.seq] = q.r
		}
		m.mu.Unlock()
		m.settle(s, false)
	}
}

// settleLimit is how long after its send a request whose reply has not
// been read is counted lost whatever its pinger read meanwhile (a pod
// that gets no reply at all).
const settleLimit = 10 * time.Second

// settle moves answered requests to received and those past the timeout
// (all, when final) to the losses. A reply counts by when it arrived (the
// kernel's timestamp, netnstest.Reply), and a request is counted lost
// only once its pinger has read the replies that arrived up to its
// timeout: on a loaded machine the scheduler may hold the reader back
// for seconds while the replies wait in the socket, and that is this
// checker's delay, not a lost ping.
func (m *Mesh) settle(s *source, final bool) {
	now := time.Now()
	upTo := s.p.ReadUpTo()
	m.mu.Lock()
	defer m.mu.Unlock()
	for seq, r := range s.pending {
		rep, ok := s.p.Reply(seq)
		switch {
		case ok && rep.From == r.addr && !rep.At.Before(r.at) && rep.At.Sub(r.at) <= replyTimeout:
			m.received++
		case final || (now.Sub(r.at) > replyTimeout && upTo.Sub(r.at) > replyTimeout) || now.Sub(r.at) > settleLimit:
			m.losses = append(m.losses, Loss{Pair: Pair{From: s.pod, To: r.to}, At: r.at})
		default:
			continue
		}
		delete(s.pending, seq)
	}
}

// Counts returns requests sent and received so far, and the losses
// settled so far.
func (m *Mesh) Counts() (sent, received int, losses []Loss) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sent, m.received, append([]Loss(nil), m.losses...)
}

// Stop ends the pings, waits up to the reply timeout for the last
// replies, closes the sockets and returns what was counted.
func (m *Mesh) Stop() (sent, received int, losses []Loss) {
	close(m.stop)
	m.wg.Wait()
	deadline := time.Now().Add(replyTimeout)
	for _, s := range m.srcs {
		for time.Now().Before(deadline) {
			m.settle(s, false)
			m.mu.Lock()
			n := len(s.pending)
			m.mu.Unlock()
			if n == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		m.settle(s, true)
	}
	var errs []error
	for _, s := range m.srcs {
		errs = append(errs, s.p.Close())
	}
	_ = errors.Join(errs...) // a socket that fails to close lost nothing
	return m.Counts()
}

// ReplyErrors returns each pod's ICMP OutErrors so far: echo requests
// that reached the pod and whose reply its kernel could not send.
//
// Every namespace's echo replies are sent through the kernel's per-CPU
// ICMP socket, one for the whole machine (net/ipv4/icmp.c), whose send
// buffer (two 64 KiB packets' worth) holds the replies until they leave.
// A namespace whose replies wait behind a neighbour that does not
// resolve (a pod whose first ARP request went out before its veth had a
// qdisc, and that retries after a second) fills that buffer, and every
// other namespace's replies on that CPU fail until the queue drains:
// pings lost between pods that have nothing to do with it, and with no
// drop anywhere in a datapath. OutErrors of the pod that did not answer
// counts each such reply.
func (m *Mesh) ReplyErrors() (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, s := range m.srcs {
		n, err := netnstest.Open(s.ns)
		if err != nil {
			return nil, err
		}
		c, err := n.ICMP()
		n.Close()
		if err != nil {
			return nil, err
		}
		out[s.pod] = c.OutErrors
	}
	return out, nil
}

// Outage is a run of consecutive lost requests of one pair.
type Outage struct {
	Pair
	From, To time.Time // first lost request's send time; last one's plus the interval
	Lost     int
}

// Len is how long the pair was unreachable.
func (o Outage) Len() time.Duration { return o.To.Sub(o.From) }

// Outages groups losses into runs per pair: two losses of a pair belong to
// one run when they were sent less than gap apart.
func Outages(losses []Loss, interval, gap time.Duration) []Outage {
	byPair := map[Pair][]time.Time{}
	for _, l := range losses {
		byPair[l.Pair] = append(byPair[l.Pair], l.At)
	}
	var out []Outage
	for p, ts := range byPair {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		cur := Outage{Pair: p, From: ts[0], To: ts[0].Add(interval), Lost: 1}
		for _, t := range ts[1:] {
			if t.Sub(cur.To) < gap {
				cur.To = t.Add(interval)
				cur.Lost++
				continue
			}
			out = append(out, cur)
			cur = Outage{Pair: p, From: t, To: t.Add(interval), Lost: 1}
		}
		out = append(out, cur)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].From.Equal(out[j].From) {
			return out[i].From.Before(out[j].From)
		}
		return out[i].Pair.String() < out[j].Pair.String()
	})
	return out
}
