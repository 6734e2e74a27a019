package netnstest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ICMP is a namespace's ICMP statistics, from the Icmp lines of its
// /proc/net/snmp.
type ICMP struct {
	InEchos     uint64 // echo requests received
	OutEchoReps uint64 // echo replies sent
	// OutErrors counts the ICMP messages the kernel built but could not
	// send: an echo request that arrived and whose reply could not be
	// allocated counts here (icmp_push_reply), not in OutEchoReps.
	OutErrors uint64
}

// ICMP reads n's ICMP statistics.
func (n *NS) ICMP() (ICMP, error) {
	var b []byte
	err := n.Do(func() error {
		var err error
		// thread-self: /proc/self/net is the namespace of the process's
		// main thread, not of this one.
		b, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	})
	if err != nil {
		return ICMP{}, fmt.Errorf("read icmp statistics in %s: %w", n.Name, err)
	}
	return parseICMP(string(b))
}

// parseICMP reads the Icmp header and value lines of /proc/net/snmp.
func parseICMP(snmp string) (ICMP, error) {
	var names, values []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Icmp:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		values = f[1:]
		break
	}
	if names == nil || len(values) != len(names) {
		return ICMP{}, errors.New("parse snmp: no Icmp header and values")
	}
	var out ICMP
	found := 0
	for i, name := range names {
		var p *uint64
		switch name {
		case "InEchos":
			p = &out.InEchos
		case "OutEchoReps":
			p = &out.OutEchoReps
		case "OutErrors":
			p = &out.OutErrors
		default:
			continue
		}
		v, err := strconv.ParseUint(values[i], 10, 64)
		if err != nil {
			return ICMP{}, fmt.Errorf("parse snmp: Icmp %s: %w", name, err)
		}
		*p = v
		found++
	}
	if found != 3 {
		return ICMP{}, errors.New("parse snmp: Icmp lacks InEchos, OutEchoReps or OutErrors")
	}
	return out, nil
}
