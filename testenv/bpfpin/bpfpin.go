// Package bpfpin reads and breaks a node's pinned eBPF objects from
// outside the datapath, the way an operator with bpftool would: tests use
// it to see what the kernel holds and to make drift the agent must repair.
package bpfpin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Keys returns the keys of the map pinned at pinDir/name, as raw bytes.
func Keys(pinDir, name string) ([][]byte, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", name, err)
	}
	defer m.Close()
	var out [][]byte
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read pinned map %s: %w", name, err)
	}
	return out, nil
}

// Count returns the number of entries in m. It reads them in batches
// (BPF_MAP_LOOKUP_BATCH, a few syscalls for thousands of entries) where
// the map type has them, else one key at a time as Keys does: a
// benchmark that polls a map until it is full then measures the filling,
// not its own reading (5,000 entries of an LPM trie: 2–5 ms against
// 27–30 ms for NextKey and Lookup per entry).
func Count(m *ebpf.Map) (int, error) {
	const chunk = 1024
	elems := func(size uint32) any {
		return reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(int(size), reflect.TypeFor[byte]())), chunk, chunk).Interface()
	}
	keys, values := elems(m.KeySize()), elems(m.ValueSize())
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil // the last batch
		case errors.Is(err, ebpf.ErrNotSupported):
			return countByKey(m)
		case err != nil:
			return 0, err
		}
	}
}

func countByKey(m *ebpf.Map) (int, error) {
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// Delete deletes key from the map pinned at pinDir/name.
func Delete(pinDir, name string, key []byte) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
	if err != nil {
		return fmt.Errorf("open pinned map %s: %w", name, err)
	}
	defer m.Close()
	if err := m.Delete(key); err != nil {
		return fmt.Errorf("delete from pinned map %s: %w", name, err)
	}
	return nil
}

// DropLink unpins the link pinned at pinDir/name and releases it; with no
// other reference left the kernel detaches its program. An error wrapping
// os.ErrNotExist means no link is pinned there.
func DropLink(pinDir, name string) error {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, name), nil)
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", name, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", name, err)
	}
	return nil
}

// Map opens the map pinned at pinDir/name; the caller closes it.
// Benchmarks that poll a map keep it open rather than reopening it.
func Map(pinDir, name string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", name, err)
	}
	return m, nil
}

// TunnelKey is the key of prefix p in weft_tunnels as the datapath writes
// it: the prefix length then the 16-byte address, an IPv4 prefix as its
// IPv4-mapped IPv6 form with 96 added to the length (docs/datapath.md).
func TunnelKey(p netip.Prefix) []byte {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	k := binary.NativeEndian.AppendUint32(nil, uint32(bits))
	a := p.Addr().As16()
	return append(k, a[:]...)
}
