/* In-program VXLAN receive (spec.Overlay.InProgram): weft_from_underlay
 * takes a VXLAN packet for a local pod out of the tunnel itself, with the
 * checks weft_ingress makes, and hands it straight into the pod, so the
 * packet skips the UDP socket lookup, the VXLAN driver and its GRO cell.
 * Whatever it does not fully accept, or cannot hand to a learned local
 * pod, it leaves untouched for the weft_vxlan device, whose weft_ingress
 * judges and counts it as without the switch; except BIG packets (BIG
 * TCP), which the device path's UDP receive would drop: see decap_vxlan. */
#ifndef WEFT_DECAP_H
#define WEFT_DECAP_H

#include <linux/udp.h>

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"
#include "tunnel.h"
#include "forward.h"
#include "conntrack.h"
#include "underlay.h"

/* Debian's uapi headers predate these (Linux 6.3). */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

/* The outer headers decap_vxlan strips: IP, UDP, VXLAN and the inner
 * Ethernet header (the outer Ethernet header stays, rewritten). */
#define DECAP_LEN_V4 (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxlan_hdr) + ETH_HLEN)
#define DECAP_LEN_V6 (sizeof(struct ipv6hdr) + sizeof(struct udphdr) + sizeof(struct vxlan_hdr) + ETH_HLEN)

/* Per-CPU statistics of the in-program receive (one array slot). */
struct decap_stats {
	__u64 rx_decap;       /* VXLAN packets decapsulated in weft_from_underlay */
	__u64 rx_decap_bytes; /* their length on the underlay, outer headers included */
	__u64 rx_decap_big;   /* of rx_decap: BIG packets (outer IPv4 lengths 0) */
	__u64 rx_decap_stack; /* of rx_decap_big: handed to the overlay device's receive */
};

/* skb->mark of a BIG packet decap_vxlan decapsulated and hands to the
 * overlay device's receive (bpf_redirect ingress), where weft_ingress
 * finds no tunnel metadata (the redirect drops it): the mark says
 * weft_from_underlay checked the outer header already. weft_ingress
 * clears it before the stack sees the packet. */
#define MARK_BIG_DECAP 0x57EF0B16

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_decap_stats SEC(".maps");

static __always_inline void count_decap(__u32 len, int big, int stack)
{
	__u32 zero = 0;
	struct decap_stats *s = bpf_map_lookup_elem(&weft_decap_stats, &zero);
	if (s) {
		s->rx_decap++;
		s->rx_decap_bytes += len;
		s->rx_decap_big += big;
		s->rx_decap_stack += stack;
	}
}

/* decap_vxlan's state bits: a BIG packet, outer ECN CE, for the overlay
 * device's receive rather than a pod. */
#define DECAP_BIG (1U << 0)
#define DECAP_CE (1U << 1)
#define DECAP_STACK (1U << 2)

/* decap_device is the overlay device (the guard's tunnel_ifindex), 0
 * without one; looked up again where needed rather than kept on the
 * stack across decap_vxlan's calls. */
static __always_inline __u32 decap_device(void)
{
	struct guard *g = guard();
	return g ? g->tunnel_ifindex : 0;
}

/* mark_ce marks the inner packet at ETH_HLEN Congestion Experienced, as
 * the VXLAN driver's decapsulation does when the outer header says so
 * (INET_ECN_decapsulate, RFC 6040): 0 when marked (or marked already),
 * < 0 when the inner packet is not ECN-capable (to be dropped). */
static __always_inline int mark_ce(struct __sk_buff *skb, __be16 proto)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = (void *)(long)skb->data;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		__u8 tos = ip->tos;
		if ((tos & 3) == 0)
			return -1;
		if ((tos & 3) == 3)
			return 0;
		__be16 old = *(__be16 *)ip;
		ip->tos = tos | 3;
		__be16 now = *(__be16 *)ip;
		return bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, now, 2) < 0 ? -1 : 0;
	}
	__u8 *w = (void *)(eth + 1);
	if ((void *)(w + 2) > data_end)
		return -1;
	/* The traffic class's ECN bits are bits 4-5 of the second byte. */
	if ((w[1] & 0x30) == 0)
		return -1;
	w[1] |= 0x30;
	return 0;
}

/* decap_vxlan takes a VXLAN packet for this node's underlay address (g's,
 * of the outer header's family) and the overlay port out of the tunnel
 * when weft_ingress would accept it and to_local_pod would hand it into a
 * learned local pod directly: outer IPv4 without options or fragments (or
 * IPv6 with UDP right after the fixed header), the VXLAN I flag alone,
 * reserved bits zero, no congestion mark (ECN CE: the driver's decapsulation
 * rules apply), an inner IPv4 or IPv6 packet whose source's tunnel entry
 * names the outer source and the VNI (check_outer), and whose destination
 * is a learned endpoint, with a TTL to spare and a flow the stack does not
 * track (stack_flow). Those two answers are remembered per inner flow
 * (weft_rp_accepted, RP_DECAP; underlay.h), as host routing's receive
 * remembers them; everything before them, check_outer included, runs for
 * every packet. Then outer IP, UDP, VXLAN and inner Ethernet go
 * (bpf_skb_adjust_room; the MSS of a GSO packet stays, the checksum level
 * drops by one as the UDP receive path's does), the remaining Ethernet
 * header gets the inner protocol and the pod's MACs, the TTL is
 * decremented and the packet enters the pod (bpf_redirect_peer). Anything
 * else: TC_ACT_OK, untouched, for the device path.
 *
 * BIG packets (BIG TCP; encap.h sends them only to a node whose programs
 * take them, FLAG_BIG_DECAP): a GSO packet longer than 65,535 with outer
 * IPv4 total length and UDP length 0, as encap.h writes them; 0 is
 * accepted for nothing else. The kernel's UDP receive would drop such a
 * packet (UDP length 0), so none may go to the device untouched: one that
 * fails the tunnel entry's check is dropped and counted here as
 * weft_ingress would; one that passes but cannot go to a learned local
 * pod (another destination, e.g. the gateway address on the pod bridge;
 * a flow the stack tracks; a TTL about to expire) is decapsulated all the
 * same and handed to the overlay device's receive (bpf_redirect ingress,
 * MARK_BIG_DECAP), where weft_ingress and the stack take it as from the
 * device. Outer ECN CE is carried to the inner header (mark_ce).
 *
 * Linux 6.18 has no flag to clear a GSO packet's UDP tunnel type on
 * decapsulation (BPF_F_ADJ_ROOM_DECAP_L4_UDP is newer): an aggregate that
 * arrived as one UDP tunnel GSO packet (a veth underlay) keeps
 * SKB_GSO_UDP_TUNNEL. The pod's stack receives it whole, which that type
 * does not affect; see docs/datapath.md ("In-program VXLAN receive").
 *
 * A global function (common.h): verified once, for any guard. */
__noinline int decap_vxlan(struct __sk_buff *skb, const struct guard *g)
{
	if (!g)
		return TC_ACT_OK;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;

	/* The outer and inner headers, each checked, in a scope of their own:
	 * what is left of them is the inner flow's key (k), and the stack
	 * they took is free for the memory's, conntrack's lookup's (the
	 * three calls' frames must fit 512 bytes). */
	struct rp_key k = {.kind = RP_DECAP};
	__be16 proto;
	__s32 strip;
	__u32 st = 0; /* DECAP_BIG, DECAP_CE, DECAP_STACK */
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET;
	{
		struct outer o = {};
		struct udphdr *udp;
		__u8 ecn;
		if (eth->h_proto == bpf_htons(ETH_P_IP)) {
			struct iphdr *ip = (void *)(eth + 1);
			if ((void *)(ip + 1) > data_end)
				return TC_ACT_OK;
			__u32 self;
			__builtin_memcpy(&self, g->under4, 4);
			/* IHL 5 and version 4 in one byte; no MF, no fragment offset. */
			if (*(__u8 *)ip != 0x45 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3FFF)) ||
			    !self || ip->daddr != self)
				return TC_ACT_OK;
			o.src[10] = 0xff;
			o.src[11] = 0xff;
			__builtin_memcpy(&o.src[12], &ip->saddr, 4);
			ecn = ip->tos & 3;
			udp = (void *)(ip + 1);
			strip = DECAP_LEN_V4;
			if (ip->tot_len == 0)
				st = DECAP_BIG;
		} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
			struct ipv6hdr *ip6 = (void *)(eth + 1);
			if ((void *)(ip6 + 1) > data_end)
				return TC_ACT_OK;
			__u32 w[4];
			__builtin_memcpy(w, g->under6, 16);
			if (ip6->nexthdr != IPPROTO_UDP || (w[0] | w[1] | w[2] | w[3]) == 0 ||
			    !addr_eq((const __u8 *)&ip6->daddr, g->under6))
				return TC_ACT_OK;
			__builtin_memcpy(o.src, &ip6->saddr, 16);
			o.v6 = 1;
			ecn = (ip6->flow_lbl[0] >> 4) & 3;
			udp = (void *)(ip6 + 1);
			strip = DECAP_LEN_V6;
		} else {
			return TC_ACT_OK;
		}
		struct vxlan_hdr *vx = (void *)(udp + 1);
		struct ethhdr *ieth = (void *)(vx + 1);
		if ((void *)(ieth + 1) > data_end)
			return TC_ACT_OK;
		if ((st & DECAP_BIG) && (udp->len || !skb->gso_size || skb->len - ETH_HLEN <= 0xFFFF))
			return TC_ACT_OK;
		if (udp->dest != bpf_htons(g->port) || vx->flags != bpf_htonl(VXLAN_FLAGS_VNI) ||
		    (vx->vni & bpf_htonl(0xff)) || (ecn == 3 && !(st & DECAP_BIG)))
			return TC_ACT_OK;
		if (ecn == 3)
			st |= DECAP_CE;
		o.vni = bpf_ntohl(vx->vni) >> 8;

		/* The inner packet's addresses, as load_addr gives them, into
		 * the flow's key. */
		proto = ieth->h_proto;
		__u8 ttl;
		if (proto == bpf_htons(ETH_P_IP)) {
			struct iphdr *iip = (void *)(ieth + 1);
			if ((void *)(iip + 1) > data_end)
				return TC_ACT_OK;
			k.src[10] = 0xff;
			k.src[11] = 0xff;
			k.dst[10] = 0xff;
			k.dst[11] = 0xff;
			__builtin_memcpy(&k.src[12], &iip->saddr, 4);
			__builtin_memcpy(&k.dst[12], &iip->daddr, 4);
			ttl = iip->ttl;
			flags |= BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
		} else if (proto == bpf_htons(ETH_P_IPV6)) {
			struct ipv6hdr *iip6 = (void *)(ieth + 1);
			if ((void *)(iip6 + 1) > data_end)
				return TC_ACT_OK;
			__builtin_memcpy(k.src, &iip6->saddr, 16);
			__builtin_memcpy(k.dst, &iip6->daddr, 16);
			/* weft_ingress drops a mapped source (ipv4_mapped); a mapped
			 * or multicast destination is the stack's. */
			if (mapped_addr(k.src) || mapped_addr(k.dst) || k.dst[0] == 0xff)
				return TC_ACT_OK;
			ttl = iip6->hop_limit;
			flags |= BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
		} else {
			return TC_ACT_OK;
		}

		/* Every packet, remembered flow or not. */
		struct tunnel_key src = {.prefixlen = 128};
		__builtin_memcpy(src.addr, k.src, 16);
		struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &src);
		if (!tv)
			return (st & DECAP_BIG) ? drop(DROP_UNKNOWN_SOURCE) : TC_ACT_OK;
		enum drop_reason bad = check_outer(&o, tv);
		if (bad)
			return (st & DECAP_BIG) ? drop(bad) : TC_ACT_OK;
		if (ttl <= 1) {
			if (!(st & DECAP_BIG) || !g->tunnel_ifindex)
				return TC_ACT_OK;
			st |= DECAP_STACK;
		}
	}

	/* Then the inner flow's memory (weft_rp_accepted, RP_DECAP): the
	 * destination's endpoint and conntrack's answer, as host routing's
	 * receive remembers them. The inner Ethernet header is at strip. */
	struct rp_value v = {};
	if (!(st & DECAP_STACK)) {
		struct flow_ports fp = {};
		flow_ports(skb, strip, &fp);
		k.sport = fp.sport;
		k.dport = fp.dport;
		__u64 now = bpf_ktime_get_coarse_ns();
		v.until = now + RP_ACCEPTED_TTL_NS;
		struct rp_value *m = rp_remembered(&k, now);
		if (m)
			__builtin_memcpy(&v, m, sizeof(v));
		else if (!rp_endpoint(&v, k.dst))
			st |= DECAP_STACK;
		if (!(st & DECAP_STACK)) {
			/* In place in the remembered entry; in v for one made now. */
			int stack = remembered_stack_flow(skb, strip, &fp, m ? &m->ct : &v.ct);
			if (!m)
				bpf_map_update_elem(&weft_rp_accepted, &k, &v, BPF_ANY);
			if (stack)
				st |= DECAP_STACK;
		}
		if ((st & DECAP_STACK) && (!(st & DECAP_BIG) || !decap_device()))
			return TC_ACT_OK;
	}

	__u32 len = skb->len;
	if (bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_MAC, flags))
		return (st & DECAP_BIG) ? drop(DROP_NOT_IP) : TC_ACT_OK; /* refused before it changed the packet */
	/* From here on the packet is the inner one: to the pod, to the
	 * overlay device or dropped. */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_NOT_IP);
	eth->h_proto = proto;
	if ((st & DECAP_CE) && mark_ce(skb, proto) < 0)
		return drop(DROP_NOT_IP);
	if (st & DECAP_STACK) {
		/* The outer Ethernet header's addresses stay: weft_ingress
		 * marks the packet for this host as it does the device's. */
		skb->mark = MARK_BIG_DECAP;
		count_decap(len, 1, 1);
		return bpf_redirect(decap_device(), BPF_F_INGRESS);
	}
	eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_NOT_IP);
	__builtin_memcpy(eth->h_dest, v.pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, v.gw_mac, ETH_ALEN);
	if (dec_ttl(skb) != 0)
		return drop(DROP_NOT_IP);
	count_rx(skb);
	count_rx_direct();
	count_decap(len, (st & DECAP_BIG) != 0, 0);
	return bpf_redirect_peer(v.ep_ifindex, 0);
}

#endif
