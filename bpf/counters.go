package bpf

import (
	"fmt"

	"github.com/weftnet/weft/bpf/internal/object"
	"github.com/weftnet/weft/bpf/spec"
)

// Counters sums the per-CPU statistics and drop counts. Drops has every
// reason the programs know (docs/datapath.md lists them), also those at
// zero; DropNoTunnel, DropSpoofed and DropOther are sums over them.
func (d *Datapath) Counters() (spec.Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ns == nil {
		return spec.Counters{}, errClosed
	}
	var per []object.WeftStats
	if err := d.objs.WeftStats.Lookup(uint32(0), &per); err != nil {
		return spec.Counters{}, fmt.Errorf("read statistics: %w", err)
	}
	c := spec.Counters{Drops: make(map[string]uint64, len(object.DropReasons))}
	for _, s := range per {
		c.TxPackets += s.TxPackets
		c.TxBytes += s.TxBytes
		c.RxPackets += s.RxPackets
		c.RxBytes += s.RxBytes
		c.RxDirect += s.RxDirect
		c.TxDirect += s.TxDirect
		c.TxEncap += s.TxEncap
		c.TxEncapBig += s.TxEncapBig
	}
	var host []object.WeftHostStats
	if err := d.objs.WeftHostStats.Lookup(uint32(0), &host); err != nil {
		return spec.Counters{}, fmt.Errorf("read host routing statistics: %w", err)
	}
	for _, s := range host {
		c.RoutedTx += s.TxRouted
		c.RoutedRx += s.RxRouted
	}
	var decap []object.WeftDecapStats
	if err := d.objs.WeftDecapStats.Lookup(uint32(0), &decap); err != nil {
		return spec.Counters{}, fmt.Errorf("read vxlan receive statistics: %w", err)
	}
	for _, s := range decap {
		c.RxDecap += s.RxDecap
		c.RxDecapBytes += s.RxDecapBytes
		c.RxDecapBig += s.RxDecapBig
		c.RxDecapStack += s.RxDecapStack
	}
	var drops []uint64
	for _, r := range object.DropReasons {
		if err := d.objs.WeftDrops.Lookup(uint32(r.Key), &drops); err != nil {
			return spec.Counters{}, fmt.Errorf("read drops %s: %w", r.Name, err)
		}
		var n uint64
		for _, x := range drops {
			n += x
		}
		c.Drops[r.Name] = n
		switch r.Class {
		case object.DropClassNoTunnel:
			c.DropNoTunnel += n
		case object.DropClassSpoofed:
			c.DropSpoofed += n
		default:
			c.DropOther += n
		}
	}
	return c, nil
}
