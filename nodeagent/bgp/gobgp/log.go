package gobgp

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	bgppacket "github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// logAdapter turns GoBGP's logger calls into hclog lines (Debug becomes
// Trace: GoBGP logs every message sent at Debug) and feeds per-peer errors
// to reasons, which is how Sessions knows why a session is down: GoBGP's
// API reports a state but no cause. It scrubs every configured password
// from messages and fields before they reach the log.
type logAdapter struct {
	log     hclog.Logger
	reasons *reasons
}

var _ gobgplog.Logger = (*logAdapter)(nil)

func (l *logAdapter) emit(level hclog.Level, msg string, fields gobgplog.Fields) {
	l.reasons.observe(msg, fields)
	if !l.log.IsTrace() && level == hclog.Trace {
		return
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	args := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, strings.ToLower(k), l.reasons.scrub(fmt.Sprint(fields[k])))
	}
	l.log.Log(level, l.reasons.scrub(msg), args...)
}

func (l *logAdapter) Panic(msg string, f gobgplog.Fields) {
	l.emit(hclog.Error, msg, f)
	panic(l.reasons.scrub(msg))
}

// Fatal is only used by GoBGP for its gRPC listener, which weft does not
// start; it logs instead of exiting the agent.
func (l *logAdapter) Fatal(msg string, f gobgplog.Fields) { l.emit(hclog.Error, msg, f) }
func (l *logAdapter) Error(msg string, f gobgplog.Fields) { l.emit(hclog.Error, msg, f) }
func (l *logAdapter) Warn(msg string, f gobgplog.Fields)  { l.emit(hclog.Warn, msg, f) }
func (l *logAdapter) Info(msg string, f gobgplog.Fields)  { l.emit(hclog.Info, msg, f) }
func (l *logAdapter) Debug(msg string, f gobgplog.Fields) { l.emit(hclog.Trace, msg, f) }
func (l *logAdapter) SetLevel(gobgplog.LogLevel)          {}

// GetLevel says Debug so GoBGP reports connect errors, which it only logs
// at that level.
func (l *logAdapter) GetLevel() gobgplog.LogLevel { return gobgplog.DebugLevel }

// reasons keeps the last error seen per peer address.
type reasons struct {
	onChange func()

	mu      sync.Mutex
	last    map[string]string
	secrets []string
}

func newReasons(onChange func()) *reasons {
	return &reasons{onChange: onChange, last: map[string]string{}}
}

func (r *reasons) observe(msg string, f gobgplog.Fields) {
	if f["Topic"] != "Peer" {
		return
	}
	peer, _ := f["Key"].(string)
	if peer == "" {
		return
	}
	var why string
	switch msg {
	case "failed to connect":
		why = fmt.Sprintf("connect: %v", f["Error"])
	case "sent notification":
		why = fmt.Sprintf("sent notification: %v", f["Data"])
	case "received notification":
		code, _ := f["Code"].(uint8)
		sub, _ := f["Subcode"].(uint8)
		why = "received notification: " + bgppacket.NewNotificationErrorCode(code, sub).String()
		if c, ok := f["Communicated-Reason"].(string); ok && c != "" {
			why += " (" + c + ")"
		}
	case "hold timer expired":
		why = "hold timer expired"
	case "graceful restart timer expired":
		why = "graceful restart timer expired"
	case "Session will be reset due to malformed BGP Header",
		"Session will be reset due to malformed BGP message",
		"Session will be reset due to malformed BGP update message":
		why = fmt.Sprintf("malformed message from peer: %v", f["Error"])
	case "state changed":
		// Only a read or write failure has no log line of its own.
		switch r := fmt.Sprint(f["reason"]); r {
		case "read-failed", "write-failed":
			why = "session reset: " + r
		default:
			return
		}
	case "Peer Down":
		why = fmt.Sprintf("session down: %v", f["Reason"])
	default:
		return
	}
	why = r.scrub(why)
	r.mu.Lock()
	changed := r.last[peer] != why
	r.last[peer] = why
	r.mu.Unlock()
	if changed {
		r.onChange()
	}
}

func (r *reasons) get(peer string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last[peer]
}

func (r *reasons) forget(peer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.last, peer)
}

func (r *reasons) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.last)
}

// secret registers a password to scrub. Passwords are kept for the
// speaker's lifetime, so a removed peer's password is never logged either.
func (r *reasons) secret(pw string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.secrets, pw) {
		r.secrets = append(r.secrets, pw)
	}
}

func (r *reasons) scrub(s string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pw := range r.secrets {
		s = strings.ReplaceAll(s, pw, "<redacted>")
	}
	return s
}
