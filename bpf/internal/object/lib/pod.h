/* The pod check: a frame a pod sends into its host-side veth carries the
 * pod's own MAC and addresses, as weft-cni assigned them (weft_pods), or it
 * is dropped. */
#ifndef WEFT_POD_H
#define WEFT_POD_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"

#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif

#define ND_ROUTER_ADVERT 134
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define ND_REDIRECT 137

/* An ARP message for IPv4 over Ethernet. */
struct arp_eth {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline int is_zero16(const __u8 a[16])
{
	__u32 w[4];
	__builtin_memcpy(w, a, 16);
	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

/* pod_owns6 reports whether a is one of the pod's IPv6 addresses: the one
 * weft-cni assigned or the link-local one of its MAC. */
static __always_inline int pod_owns6(const struct pod_value *pod, const __u8 a[16])
{
	return ((pod->flags & POD_IPV6) && addr_eq(a, pod->ipv6)) || addr_eq(a, pod->ipv6_ll);
}

/* check_arp: the sender must be the pod (its MAC, its IPv4 address or
 * 0.0.0.0 as in an ARP probe; a pod without IPv4 has 0.0.0.0 recorded, so
 * only probes pass). */
static __always_inline enum drop_reason check_arp(struct __sk_buff *skb, const struct pod_value *pod)
{
	struct arp_eth arp;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &arp, sizeof(arp)) < 0)
		return DROP_POD_ARP;
	if (arp.hrd != bpf_htons(1) || arp.pro != bpf_htons(ETH_P_IP) || arp.hln != 6 || arp.pln != 4)
		return DROP_POD_ARP;
	if (!mac_eq(arp.sha, pod->mac))
		return DROP_POD_ARP;
	__u32 spa, own;
	__builtin_memcpy(&spa, arp.spa, 4);
	__builtin_memcpy(&own, pod->ipv4, 4);
	if (spa == 0)
		return 0;
	if (spa != own)
		return DROP_POD_ARP;
	return 0;
}

/* check_nd looks past the IPv6 extension headers for neighbour discovery a
 * pod must not send: a router advertisement or redirect (it is not the
 * router), a neighbour advertisement for an address not its own, or
 * duplicate address detection (source ::) for an address not its own.
 * Fragments pass: the kernel ignores fragmented neighbour discovery
 * (RFC 6980). */
static __always_inline enum drop_reason check_nd(struct __sk_buff *skb, const struct pod_value *pod,
						 __u8 nexthdr, int unspecified)
{
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 nh = nexthdr;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS)
			break;
		__u8 ext[2];
		if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
			return DROP_POD_PROTOCOL;
		nh = ext[0];
		off += ((__u32)ext[1] + 1) * 8;
	}
	if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS)
		return DROP_POD_PROTOCOL; /* more extension headers than a pod needs */
	if (nh != IPPROTO_ICMPV6)
		return 0;
	__u8 type;
	if (bpf_skb_load_bytes(skb, off, &type, 1) < 0)
		return DROP_POD_PROTOCOL;
	if (type == ND_ROUTER_ADVERT || type == ND_REDIRECT)
		return DROP_POD_ND;
	if (type == ND_NEIGHBOR_ADVERT || (type == ND_NEIGHBOR_SOLICIT && unspecified)) {
		__u8 target[16];
		if (bpf_skb_load_bytes(skb, off + 8, target, 16) < 0)
			return DROP_POD_ND;
		if (!pod_owns6(pod, target))
			return DROP_POD_ND;
	}
	return 0;
}

/* check_pod returns 0 when the frame carries only pod's own MAC and
 * addresses, else the drop reason. IPv6 sources the pod may use besides its
 * address: its link-local address, and :: towards a multicast group
 * (duplicate address detection, MLD before it has an address). */
static __always_inline enum drop_reason check_pod(struct __sk_buff *skb, const struct pod_value *pod)
{
	if (skb->vlan_present)
		return DROP_POD_PROTOCOL;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return DROP_POD_PROTOCOL;
	if (!mac_eq(eth->h_source, pod->mac))
		return DROP_POD_MAC;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return DROP_POD_PROTOCOL;
		__u32 own;
		__builtin_memcpy(&own, pod->ipv4, 4);
		if (!(pod->flags & POD_IPV4) || ip->saddr != own)
			return DROP_POD_SOURCE;
		return 0;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return DROP_POD_PROTOCOL;
		__u8 src[16];
		__builtin_memcpy(src, &ip6->saddr, 16);
		int unspecified = 0;
		if (!pod_owns6(pod, src)) {
			if (!is_zero16(src) || ip6->daddr.in6_u.u6_addr8[0] != 0xff)
				return DROP_POD_SOURCE;
			unspecified = 1;
		}
		return check_nd(skb, pod, ip6->nexthdr, unspecified);
	}
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return check_arp(skb, pod);
	return DROP_POD_PROTOCOL;
}

#endif
