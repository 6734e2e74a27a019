package etcdtest

import (
	"net"
	"sync"
)

// Proxy is a TCP proxy on loopback in front of an etcd member. Taking it
// down cuts every client behind it off etcd (an outage or partition as
// the agent sees it) while the test keeps writing to etcd directly.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	held  chan struct{} // while stalled: closed when released
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to target
// ("host:port"). It starts up unless down is true.
func NewProxy(target string, down bool) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, down: down, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Endpoint is the client URL of the proxy.
func (p *Proxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

// SetDown cuts (true) or restores (false) the path to etcd. Cutting closes
// every open connection; while down, new connections are closed at once.
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
	}
}

// SetStalled holds (true) or releases (false) every byte between the
// clients and etcd without closing a connection: the path drops packets,
// as a firewall rule makes it, and a client learns of it only from its
// own timeouts. Released, what was held is delivered.
func (p *Proxy) SetStalled(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case stalled && p.held == nil:
		p.held = make(chan struct{})
	case !stalled && p.held != nil:
		close(p.held)
		p.held = nil
	}
}

// wait returns when the path is not stalled.
func (p *Proxy) wait() {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	if held != nil {
		<-held
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.SetDown(true)
	p.SetStalled(false)
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			if !p.track(u) {
				u.Close()
				return
			}
			defer p.untrack(u)
			done := make(chan struct{}, 2)
			go func() { p.pipe(u, c); done <- struct{}{} }()
			go func() { p.pipe(c, u); done <- struct{}{} }()
			<-done
			c.Close()
			u.Close()
			<-done
		}()
	}
}

// pipe copies src to dst, holding each read while the path is stalled.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
