package gobgp

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// shutdownSessions shuts down (shutdown(2), not close) every TCP socket of
// this process that is a BGP session with one of peers: remote port 179,
// or local port listenPort for sessions the peer opened. The peer sees the
// connection end with no NOTIFICATION, which is what graceful restart
// (RFC 4724) treats as a restart; GoBGP still owns and later closes the
// file descriptors, and its NOTIFICATION write then fails harmlessly.
//
// GoBGP does not expose its connections, hence the walk over /proc/self/fd.
// Each descriptor's addresses are read right before shutting it down.
func shutdownSessions(peers []netip.Addr, listenPort int32) (int, error) {
	if len(peers) == 0 {
		return 0, nil
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("list fds: %w", err)
	}
	n := 0
	for _, e := range entries {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_STREAM {
			continue
		}
		remote, err := syscall.Getpeername(fd)
		if err != nil {
			continue
		}
		local, err := syscall.Getsockname(fd)
		if err != nil {
			continue
		}
		raddr, rport := sockaddr(remote)
		_, lport := sockaddr(local)
		if !raddr.IsValid() || (rport != 179 && lport != int(listenPort)) {
			continue
		}
		for _, p := range peers {
			if p == raddr {
				if err := syscall.Shutdown(fd, syscall.SHUT_RDWR); err == nil {
					n++
				}
				break
			}
		}
	}
	return n, nil
}

func sockaddr(sa syscall.Sockaddr) (netip.Addr, int) {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrFrom4(a.Addr), a.Port
	case *syscall.SockaddrInet6:
		return netip.AddrFrom16(a.Addr).Unmap(), a.Port
	}
	return netip.Addr{}, 0
}
