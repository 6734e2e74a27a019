// Package proc runs weft's BGP speaker in a process of its own. The agent
// side is Client, which implements the agent's Speaker over a child
// process (weft-bgp); the child side is Serve, which drives a speaker
// from its parent's requests. Neither imports GoBGP: cmd/weft-bgp hands
// Serve the GoBGP speaker (package gobgp), so weft-agent's binary does not
// carry it (docs/bgp.md, "Two processes").
//
// The protocol: the parent writes weftv1.SpeakerRequest messages to the
// child's stdin, the child writes weftv1.SpeakerMessage messages (a reply
// per request, and its state whenever it may have changed) to its stdout,
// each prefixed with its varint length (protodelim). The child logs to
// stderr in hclog's JSON format; the client forwards each line into the
// agent's logger.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/weftnet/weft/nodeagent/bgp"
	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

// maxMessage bounds one message on the pipe (a state with every route and
// session of a large mesh fits many times over).
const maxMessage = 64 << 20

// stopTimeout bounds the Stop that ends the speaker when the parent is
// gone.
const stopTimeout = 5 * time.Second

// Serve answers the requests read from in with sp until in ends, writing
// replies and state to out. When in ends (the parent closed the pipe or
// is gone) it stops the speaker without withdrawing, as if the process
// had died: peers with graceful restart keep this node's routes. It
// returns nil then, or the error that ended reading or writing.
func Serve(in io.Reader, out io.Writer, sp bgp.Speaker, log hclog.Logger) error {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	w := &writer{out: out}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { pushState(ctx, w, sp) })
	err := readRequests(in, w, sp, log)
	cancel()
	wg.Wait()
	sctx, scancel := context.WithTimeout(context.Background(), stopTimeout)
	defer scancel()
	if serr := sp.Stop(sctx, false); serr != nil {
		log.Warn("stop speaker", "error", serr)
	}
	return err
}

func readRequests(in io.Reader, w *writer, sp bgp.Speaker, log hclog.Logger) error {
	r := bufio.NewReader(in)
	for {
		req := &weftv1.SpeakerRequest{}
		err := protodelim.UnmarshalOptions{MaxSize: maxMessage}.UnmarshalFrom(r, req)
		if errors.Is(err, io.EOF) {
			log.Info("parent closed the request pipe; stopping without withdraw")
			return nil
		}
		if err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		rep := &weftv1.SpeakerReply{Id: req.GetId()}
		ctx := context.Background()
		switch op := req.GetOp().(type) {
		case *weftv1.SpeakerRequest_Apply:
			cfg, adv, nh, err := applyFromProto(op.Apply)
			if err == nil {
				err = sp.Apply(ctx, cfg, adv, nh)
			}
			setError(rep, err)
		case *weftv1.SpeakerRequest_Stop:
			setError(rep, sp.Stop(ctx, op.Stop.GetWithdraw()))
		default:
			rep.Error = "unknown request"
		}
		if err := w.write(&weftv1.SpeakerMessage{Msg: &weftv1.SpeakerMessage_Reply{Reply: rep}}); err != nil {
			return err
		}
	}
}

func setError(rep *weftv1.SpeakerReply, err error) {
	if err != nil {
		rep.Error = err.Error()
		rep.InvalidConfig = errors.Is(err, bgp.ErrInvalidConfig)
	}
}

// pushState writes the speaker's state whenever it signals a change and
// the state differs from the last one written.
func pushState(ctx context.Context, w *writer, sp bgp.Speaker) {
	var last *weftv1.SpeakerState
	for {
		select {
		case <-ctx.Done():
			return
		case <-sp.Changed():
		}
		st := &weftv1.SpeakerState{Routes: routesToProto(sp.Routes()), Sessions: sp.Sessions()}
		if last != nil && proto.Equal(st, last) {
			continue
		}
		if w.write(&weftv1.SpeakerMessage{Msg: &weftv1.SpeakerMessage_State{State: st}}) != nil {
			return
		}
		last = st
	}
}

// writer serializes whole messages onto out.
type writer struct {
	mu  sync.Mutex
	out io.Writer
}

func (w *writer) write(m *weftv1.SpeakerMessage) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := protodelim.MarshalTo(w.out, m); err != nil {
		return fmt.Errorf("write to parent: %w", err)
	}
	return nil
}
