package netnstest

import (
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
	var out ICMP
	for _, f := range []struct {
		name string
		p    *uint64
	}{{"InEchos", &out.InEchos}, {"OutEchoReps", &out.OutEchoReps}, {"OutErrors", &out.OutErrors}} {
		v, err := SNMP(snmp, "Icmp", f.name)
		if err != nil {
			return ICMP{}, err
		}
		*f.p = v
	}
	return out, nil
}

// SNMP returns the statistic key of section ("Ip", "Icmp", ...) in snmp,
// the text of a /proc/net/snmp: the section's header line names the
// fields, the line after it holds their values.
func SNMP(snmp, section, key string) (uint64, error) {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != section+":" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		values := f[1:]
		if len(values) != len(names) {
			return 0, fmt.Errorf("parse snmp: %s has %d names and %d values", section, len(names), len(values))
		}
		for i, name := range names {
			if name == key {
				v, err := strconv.ParseUint(values[i], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("parse snmp: %s %s: %w", section, key, err)
				}
				return v, nil
			}
		}
		return 0, fmt.Errorf("parse snmp: %s has no %s", section, key)
	}
	return 0, fmt.Errorf("parse snmp: no %s header and values", section)
}
