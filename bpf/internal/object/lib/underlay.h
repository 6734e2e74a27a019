/* The underlay check: what arrives on the underlay interface without
 * encapsulation may not pass for pod traffic. A packet whose source is in a
 * pod network must arrive the way this node routes to that source (strict
 * reverse path, interface and neighbour MAC); in overlay modes a plain
 * packet for a pod is dropped as well. */
#ifndef WEFT_UNDERLAY_H
#define WEFT_UNDERLAY_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* in_pod_nets reports whether a (IPv4 as IPv4-mapped) lies in one of g's
 * pod networks. */
static __always_inline int in_pod_nets(const struct guard *g, const __u8 a[16])
{
	__u32 x[4];
	__builtin_memcpy(x, a, 16);
#pragma unroll
	for (int i = 0; i < GUARD_NETS; i++) {
		if (i >= g->nets)
			break;
		__u32 m[4], p[4];
		__builtin_memcpy(m, g->net[i].mask, 16);
		__builtin_memcpy(p, g->net[i].addr, 16);
		if ((x[0] & m[0]) == p[0] && (x[1] & m[1]) == p[1] && (x[2] & m[2]) == p[2] &&
		    (x[3] & m[3]) == p[3])
			return 1;
	}
	return 0;
}

/* check_reverse_path accepts a packet with source src (to dst) only when
 * this node would send a packet to src out of the interface it came in on,
 * to the neighbour whose MAC is the frame's source: the owner itself when
 * it is adjacent, the router when the network routes (gateway, BGP). The
 * kernel's rp_filter checks the interface only. */
static __always_inline int check_reverse_path(struct __sk_buff *skb, const struct tunnel_key *src,
					      const struct tunnel_key *dst)
{
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_REVERSE_PATH);
	__u8 from[ETH_ALEN];
	__builtin_memcpy(from, eth->h_source, ETH_ALEN);
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ingress_ifindex;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		fib.family = AF_INET;
		__builtin_memcpy(&fib.ipv4_dst, &src->addr[12], 4);
		__builtin_memcpy(&fib.ipv4_src, &dst->addr[12], 4);
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, src->addr, 16);
		__builtin_memcpy(fib.ipv6_src, dst->addr, 16);
	}
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	/* FRAG_NEEDED: the route and neighbour were found; only this packet
	 * would not fit as it is, which says nothing about where it came from. */
	if ((rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) &&
	    fib.ifindex == skb->ingress_ifindex && mac_eq(fib.dmac, from))
		return TC_ACT_OK;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH && fib.ifindex == skb->ingress_ifindex)
		return drop(DROP_REVERSE_PATH_UNRESOLVED);
	return drop(DROP_REVERSE_PATH);
}

#endif
