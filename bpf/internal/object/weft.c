//go:build ignore

// weft's datapath: five tc programs. The headers in lib/ hold what they
// share: the maps (maps.h), statistics and drop reasons (stats.h), packet
// addresses (addr.h), the tunnel key (tunnel.h), forwarding past the
// node's stack (forward.h), the pod check (pod.h) and the underlay check
// (underlay.h); the transmit fast paths encapsulate VXLAN themselves with
// CONFIG_ENCAP (encap.h) and remember per flow what they asked (pairs.h).
//
// On the flow-based overlay device:
//   weft_egress   sets the tunnel key of a packet for a remote pod from the
//                 tunnel map (LPM trie) so the collect_md device knows where
//                 to send it; a miss is dropped.
//   weft_ingress  accepts a decapsulated packet only when its outer source
//                 is the endpoint that owns the inner source's prefix, marks
//                 it PACKET_HOST (its destination MAC is the sender's device
//                 MAC) and hands a packet for a local pod past the stack;
//                 also a BIG packet weft_from_underlay decapsulated and
//                 marked (MARK_BIG_DECAP, lib/decap.h).
// The transmit fast path, from local pods straight into the tunnel:
//   weft_from_pods  on ingress of the pod bridge (weft0);
//   weft_from_port  on ingress of the host side of each pod veth (attached
//                   by weft-cni): drops what the pod sends with addresses
//                   not its own, then skips the bridge as well.
// On the underlay interface:
//   weft_from_underlay  drops plain packets that pass for pod traffic and,
//                       with the in-program receive on, decapsulates VXLAN
//                       packets for local pods itself, and BIG ones for
//                       any destination (lib/decap.h).
// Both also route packets for natively routed remote pods to the underlay
// in eBPF (host routing, lib/hostroute.h), and weft_from_underlay hands
// such packets from remote pods that passed its check to local pods.

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/addr.h"
#include "lib/tunnel.h"
#include "lib/forward.h"
#include "lib/pod.h"
#include "lib/underlay.h"
#include "lib/hostroute.h"
#include "lib/decap.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("tc")
int weft_egress(struct __sk_buff *skb)
{
	/* Set by the transmit fast path, from its own lookup. */
	if (tunnel_key_set(skb)) {
		count_tx(skb);
		return TC_ACT_OK;
	}

	struct tunnel_key key = {};
	switch (load_addr(skb, &key, ADDR_DST)) {
	case ADDR_OK:
		break;
	case ADDR_IPV6_MULTICAST:
		return drop(DROP_IPV6_MULTICAST);
	case ADDR_IPV4_MAPPED:
		return drop(DROP_IPV4_MAPPED);
	default:
		return drop(DROP_NOT_IP);
	}
	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return drop(DROP_NO_TUNNEL);
	if (set_tunnel(skb, tv) < 0)
		return drop(DROP_TUNNEL_KEY);
	count_tx(skb);
	return TC_ACT_OK;
}

SEC("tc")
int weft_ingress(struct __sk_buff *skb)
{
	struct outer o = {};
	if (read_outer(skb, &o) < 0) {
		/* A BIG packet weft_from_underlay decapsulated, its outer
		 * header checked (lib/decap.h), for a destination it could
		 * not hand to a local pod itself. */
		if (skb->mark != MARK_BIG_DECAP)
			return drop(DROP_NO_TUNNEL_INFO);
		skb->mark = 0;
	} else {
		struct tunnel_key key = {};
		switch (load_addr(skb, &key, ADDR_SRC)) {
		case ADDR_OK:
			break;
		case ADDR_IPV4_MAPPED:
			return drop(DROP_IPV4_MAPPED);
		default:
			return drop(DROP_NOT_IP);
		}
		struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
		if (!tv)
			return drop(DROP_UNKNOWN_SOURCE);
		enum drop_reason bad = check_outer(&o, tv);
		if (bad)
			return drop(bad);
	}

	bpf_skb_change_type(skb, PACKET_HOST);
	count_rx(skb);
	struct tunnel_key dst = {};
	if (load_addr(skb, &dst, ADDR_DST) != ADDR_OK)
		return TC_ACT_OK;
	return to_local_pod(skb, &dst);
}

// weft_from_pods runs on ingress of the pod bridge, where frames from local
// pods to the gateway enter the node's stack. A unicast packet whose
// destination has a tunnel entry goes straight into the tunnel (to_tunnel),
// one for a natively routed pod CIDR straight to the underlay
// (host_route_out); anything else goes on to the stack unchanged.
SEC("tc")
int weft_from_pods(struct __sk_buff *skb)
{
	struct tunnel_key key = {};
	if (load_addr(skb, &key, ADDR_DST) != ADDR_OK)
		return TC_ACT_OK;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth || (eth->h_dest[0] & 1))
		return TC_ACT_OK; /* broadcast/multicast frames are not routed here */
	/* A pod whose port has the pod check (weft_pods) had its packets
	 * through weft_from_port, which sent what it could past the stack;
	 * what reaches the bridge from it (a Service address that
	 * br_netfilter has DNATed by now, with a conntrack entry that only
	 * the stack confirms) belongs to the stack. */
	struct tunnel_key src = {};
	if (load_addr(skb, &src, ADDR_SRC) != ADDR_OK)
		return TC_ACT_OK;
	struct endpoint_value *ep = endpoint(src.addr);
	if (ep) {
		__u32 port = ep->ifindex;
		if (bpf_map_lookup_elem(&weft_pods, &port))
			return TC_ACT_OK;
	}
	struct config *cfg = config();
	if (cfg && cfg->tunnel_ifindex) {
		struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
		if (tv)
			return to_tunnel(skb, cfg, &src, &key, tv);
	}
	return host_route_out(skb, &src, &key);
}

// weft_from_port runs on ingress of each pod's host-side veth, attached by
// weft-cni with the pod's entry in weft_pods. A frame that is not the
// pod's own (MAC, addresses, ARP and neighbour discovery; check_pod), or
// from a port without an entry, is dropped. A packet from the pod to the
// gateway MAC whose destination has a tunnel entry then skips the bridge as
// well as the node's stack (to_tunnel), one for a natively routed pod CIDR
// too (host_route_out); anything else goes on to the bridge.
SEC("tc")
int weft_from_port(struct __sk_buff *skb)
{
	__u32 port = skb->ifindex;
	struct pod_value *pod = bpf_map_lookup_elem(&weft_pods, &port);
	if (!pod)
		return drop(DROP_POD_UNKNOWN);
	enum drop_reason bad = check_pod(skb, pod);
	if (bad)
		return drop(bad);

	struct config *cfg = config();
	if (!cfg || !(cfg->flags & CONFIG_PORT_FAST))
		return TC_ACT_OK;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth || !mac_eq(eth->h_dest, cfg->gw_mac))
		return TC_ACT_OK;
	struct tunnel_key key = {};
	if (load_addr(skb, &key, ADDR_DST) != ADDR_OK)
		return TC_ACT_OK;
	struct tunnel_key src = {};
	if (load_addr(skb, &src, ADDR_SRC) != ADDR_OK)
		return TC_ACT_OK;
	struct tunnel_value *tv = NULL;
	if (cfg->tunnel_ifindex)
		tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	int verdict;
	if (tv)
		verdict = to_tunnel(skb, cfg, &src, &key, tv);
	else
		verdict = host_route_out(skb, &src, &key);
	if (verdict == TC_ACT_REDIRECT)
		count_tx_direct();
	return verdict;
}

// weft_from_underlay runs on ingress of the underlay interface, where
// tunnel packets arrive (their outer addresses are the nodes'; they pass
// untouched) and, in native modes, plain pod traffic. A plain packet with a
// source in a pod network passes only when it came the way this node
// routes to that source (check_reverse_path), and then, from a natively
// routed remote pod CIDR, goes straight to a local pod (host_route_in); in
// overlay modes one for a pod network is dropped as well. With
// GUARD_DECAP, a VXLAN packet for a local pod that weft_ingress would
// accept is taken out of the tunnel here (decap_vxlan, lib/decap.h).
// Anything else (the node's own traffic, ARP) is not its business.
SEC("tc")
int weft_from_underlay(struct __sk_buff *skb)
{
	struct guard *g = guard();
	if (!g)
		return TC_ACT_OK;
	struct tunnel_key src = {}, dst = {};
	/* Not IP (ARP, LLDP): both keys stay zero, in no pod network. */
	int both = pod_addrs(skb, g, &src, &dst);
	int s = both & ((1 << POD_ADDR_DST_SHIFT) - 1), d = both >> POD_ADDR_DST_SHIFT;
	if ((s | d) & POD_ADDR_MAPPED)
		return drop(DROP_IPV4_MAPPED);
	if (s & POD_ADDR_POD) {
		struct rp_memo r = {};
		int verdict = check_reverse_path(skb, &src, &dst, &r);
		if (verdict != TC_ACT_OK)
			return verdict;
		if (!(s & d & POD_ADDR_OK))
			return TC_ACT_OK; /* e.g. IPv6 multicast: the stack's */
		return host_route_in(skb, &dst, &r);
	}
	if ((d & POD_ADDR_POD) && (g->flags & GUARD_TUNNEL_ONLY))
		return drop(DROP_PLAIN_TO_POD);
	if (g->flags & GUARD_DECAP)
		return decap_vxlan(skb, g);
	return TC_ACT_OK;
}
