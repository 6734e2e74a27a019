package etcdtest

import (
	"io"
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

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.SetDown(true)
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
			go func() { io.Copy(u, c); done <- struct{}{} }()
			go func() { io.Copy(c, u); done <- struct{}{} }()
			<-done
			c.Close()
			u.Close()
			<-done
		}()
	}
}
