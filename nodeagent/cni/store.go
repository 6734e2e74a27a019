package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// ErrExhausted means every address of a pool is allocated.
var ErrExhausted = errors.New("cni: pod CIDR exhausted")

// Pool is the range addresses are allocated from: every address of Prefix
// except the network address, the gateway and (IPv4) the broadcast address.
type Pool struct {
	Prefix  netip.Prefix
	Gateway netip.Addr
}

// Allocation is the addresses held by one attachment (container ID and
// interface name), at most one per family.
type Allocation struct {
	ContainerID string       `json:"container_id"`
	IfName      string       `json:"ifname"`
	IPs         []netip.Addr `json:"ips"`
	// Netns is the pod network namespace path the runtime gave ADD ("" in
	// stores written before it was recorded): a lease whose namespace and
	// host veth are both gone is stale (see ReserveIn).
	Netns string `json:"netns,omitempty"`
}

type storeState struct {
	// Last is the last address handed out per prefix, so allocation goes
	// round-robin and a freed address is not reused at once.
	Last        map[string]netip.Addr `json:"last,omitempty"`
	Allocations []Allocation          `json:"allocations"`
}

// Store is the on-disk address store of one network: a JSON state file
// replaced atomically (write, fsync, rename) and a lock file held with
// flock(LOCK_EX) for every read-modify-write, so concurrent plugin
// processes never hand out the same address and the state survives
// restarts. A Store value is safe for use by one goroutine at a time; use
// one Store per goroutine (flock locks per open file description, so two
// Stores on one directory exclude each other even in one process).
type Store struct {
	dir string
}

// OpenStore returns the store kept in dir, creating dir if needed.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store dir: %w", err)
	}
	return &Store{dir: dir}, nil
}

// attachmentStripes is how many lock files LockAttachment spreads the
// attachments over. Files are never removed (removing a lock file another
// process waits on would let a third lock a new one), so their number is
// fixed; two attachments that share a stripe only take turns.
const attachmentStripes = 64

// LockAttachment takes the lock of one attachment (container ID and
// interface name) and returns its release. ADD, DEL and CHECK of one
// attachment hold it from start to end, so a runtime that repeats a call
// while the first still runs (after its own timeout) waits for it instead
// of finding a half-made pair. Other attachments go on in parallel (up to
// the stripe they share); the store's own lock is taken inside it, never
// around it.
func (s *Store) LockAttachment(id, ifName string) (unlock func(), err error) {
	h := fnv.New32a()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(ifName))
	name := filepath.Join(s.dir, fmt.Sprintf("attach-%02d.lock", h.Sum32()%attachmentStripes))
	lf, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open attachment lock: %w", err)
	}
	if err := flock(lf); err != nil {
		lf.Close()
		return nil, fmt.Errorf("lock attachment %s/%s: %w", id, ifName, err)
	}
	// Closing the file releases the lock.
	return func() { lf.Close() }, nil
}

// flock takes f's exclusive lock, waiting for it.
func flock(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			return err
		}
	}
}

func (s *Store) path() string { return filepath.Join(s.dir, "state.json") }

// locked runs fn with the store's exclusive lock held, passing the current
// state; when fn returns write=true the state is saved before unlocking.
func (s *Store) locked(fn func(st *storeState) (write bool, err error)) error {
	lf, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open store lock: %w", err)
	}
	defer lf.Close()
	if err := flock(lf); err != nil {
		return fmt.Errorf("lock store: %w", err)
	}
	// Closing the file releases the lock.
	st := &storeState{}
	data, err := os.ReadFile(s.path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read store: %w", err)
	default:
		if err := json.Unmarshal(data, st); err != nil {
			return fmt.Errorf("decode store %s: %w", s.path(), err)
		}
	}
	write, err := fn(st)
	if err != nil || !write {
		return err
	}
	return s.save(st)
}

func (s *Store) save(st *storeState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode store: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, "state-*.tmp")
	if err != nil {
		return fmt.Errorf("write store: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write store: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path()); err != nil {
		return fmt.Errorf("replace store: %w", err)
	}
	return nil
}

func find(st *storeState, id, ifName string) int {
	return slices.IndexFunc(st.Allocations, func(a Allocation) bool {
		return a.ContainerID == id && a.IfName == ifName
	})
}

// Reserve allocates one address from each pool for (id, ifName) and
// persists it before returning. When the attachment already holds
// addresses in these pools they are returned with fresh=false (a repeated
// ADD). An exhausted pool returns an error wrapping ErrExhausted and
// allocates nothing.
func (s *Store) Reserve(id, ifName string, pools []Pool) (ips []netip.Addr, fresh bool, err error) {
	ips, fresh, _, err = s.ReserveIn(id, ifName, "", pools, nil)
	return ips, fresh, err
}

// ReserveIn is Reserve for an attachment in network namespace netns
// (recorded with the lease) that first frees every other lease for which
// stale returns true, and returns those. The plugin calls it with a test
// for leases whose pod is gone without a DEL reaching weft-cni: a chained
// plugin that fails ADD and then DEL (libcni runs DEL in reverse order and
// stops at the first failure) would otherwise leak one address per retry.
func (s *Store) ReserveIn(id, ifName, netns string, pools []Pool, stale func(Allocation) bool) (ips []netip.Addr, fresh bool, freed []Allocation, err error) {
	err = s.locked(func(st *storeState) (bool, error) {
		write := false
		if stale != nil {
			kept := st.Allocations[:0]
			for _, a := range st.Allocations {
				if !(a.ContainerID == id && a.IfName == ifName) && stale(a) {
					freed = append(freed, a)
					continue
				}
				kept = append(kept, a)
			}
			st.Allocations = kept
			write = len(freed) > 0
		}
		if i := find(st, id, ifName); i >= 0 {
			old := st.Allocations[i].IPs
			if matches(old, pools) {
				ips = slices.Clone(old)
				return write, nil
			}
			// The node's pod CIDR changed under an existing attachment:
			// drop the stale lease and allocate anew.
			st.Allocations = slices.Delete(st.Allocations, i, i+1)
		}
		used := map[netip.Addr]bool{}
		for _, a := range st.Allocations {
			for _, ip := range a.IPs {
				used[ip] = true
			}
		}
		if st.Last == nil {
			st.Last = map[string]netip.Addr{}
		}
		var got []netip.Addr
		for _, p := range pools {
			ip, err := next(p, st.Last[p.Prefix.String()], used)
			if err != nil {
				freed = nil // nothing is written
				return false, err
			}
			got = append(got, ip)
		}
		for i, p := range pools {
			st.Last[p.Prefix.String()] = got[i]
		}
		st.Allocations = append(st.Allocations, Allocation{ContainerID: id, IfName: ifName, IPs: got, Netns: netns})
		ips, fresh = got, true
		return true, nil
	})
	return ips, fresh, freed, err
}

func matches(ips []netip.Addr, pools []Pool) bool {
	if len(ips) != len(pools) {
		return false
	}
	for i, p := range pools {
		if !p.Prefix.Contains(ips[i]) || ips[i] == p.Gateway {
			return false
		}
	}
	return true
}

// next returns the first free address after last (wrapping around).
func next(p Pool, last netip.Addr, used map[netip.Addr]bool) (netip.Addr, error) {
	first := p.Prefix.Addr().Next()
	lastAddr := lastOf(p.Prefix)
	if p.Prefix.Addr().Is4() {
		lastAddr = lastAddr.Prev() // broadcast
	}
	if !first.IsValid() || !lastAddr.IsValid() || lastAddr.Less(first) {
		return netip.Addr{}, fmt.Errorf("allocate from %s: %w: it has no room for pods", p.Prefix, ErrExhausted)
	}
	start := first
	if last.IsValid() && p.Prefix.Contains(last) && last.Less(lastAddr) && !last.Less(first) {
		start = last.Next()
	}
	// At most len(used)+2 candidates can be taken (used ones and the
	// gateway), so the scan is bounded even for an IPv6 /64.
	ip := start
	for n := 0; n < len(used)+2; n++ {
		if ip != p.Gateway && !used[ip] {
			return ip, nil
		}
		if ip == lastAddr {
			ip = first
		} else {
			ip = ip.Next()
		}
		if ip == start {
			break
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate from %s: %w: %d addresses in use", p.Prefix, ErrExhausted, inPool(p, used))
}

func inPool(p Pool, used map[netip.Addr]bool) int {
	n := 0
	for ip := range used {
		if p.Prefix.Contains(ip) {
			n++
		}
	}
	return n
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 7; j >= 0; j-- {
			if i*8+(7-j) >= bits {
				b[i] |= 1 << j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Release frees the addresses of (id, ifName). Releasing an unknown
// attachment is not an error; found says whether there was one.
func (s *Store) Release(id, ifName string) (found bool, err error) {
	err = s.locked(func(st *storeState) (bool, error) {
		i := find(st, id, ifName)
		if i < 0 {
			return false, nil
		}
		st.Allocations = slices.Delete(st.Allocations, i, i+1)
		found = true
		return true, nil
	})
	return found, err
}

// Get returns the allocation of (id, ifName), if any.
func (s *Store) Get(id, ifName string) (Allocation, bool, error) {
	var a Allocation
	var ok bool
	err := s.locked(func(st *storeState) (bool, error) {
		if i := find(st, id, ifName); i >= 0 {
			a, ok = st.Allocations[i], true
		}
		return false, nil
	})
	return a, ok, err
}

// List returns every allocation.
func (s *Store) List() ([]Allocation, error) {
	var out []Allocation
	err := s.locked(func(st *storeState) (bool, error) {
		out = slices.Clone(st.Allocations)
		return false, nil
	})
	return out, err
}

// Retain frees every allocation for which keep returns false and returns
// the freed ones (GC).
func (s *Store) Retain(keep func(id, ifName string) bool) ([]Allocation, error) {
	var freed []Allocation
	err := s.locked(func(st *storeState) (bool, error) {
		kept := st.Allocations[:0]
		for _, a := range st.Allocations {
			if keep(a.ContainerID, a.IfName) {
				kept = append(kept, a)
			} else {
				freed = append(freed, a)
			}
		}
		st.Allocations = kept
		return len(freed) > 0, nil
	})
	return freed, err
}
