/* The transmit fast paths' per-flow memory (weft_routed_pairs): what was
 * asked about a flow leaving a local pod, for host routing (hostroute.h)
 * and the tunnel (forward.h), and the FIB lookup whose answer goes with
 * it. */
#ifndef WEFT_PAIRS_H
#define WEFT_PAIRS_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "conntrack.h"

#define WEFT_AF_INET 2
#define WEFT_AF_INET6 10

/* fib_params fills p from the packet's IP header for a forwarding lookup
 * as if it had arrived on ifindex. tot_len stays 0: the kernel then checks
 * the skb against the egress device's MTU itself, GSO aware. */
static __always_inline int fib_params(struct __sk_buff *skb, struct bpf_fib_lookup *p, __u32 ifindex)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return -1;
	p->ifindex = ifindex;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		p->family = WEFT_AF_INET;
		p->l4_protocol = ip->protocol;
		p->tos = ip->tos;
		p->ipv4_src = ip->saddr;
		p->ipv4_dst = ip->daddr;
		return 0;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = WEFT_AF_INET6;
		p->l4_protocol = ip6->nexthdr;
		p->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
		__builtin_memcpy(p->ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(p->ipv6_dst, &ip6->daddr, 16);
		return 0;
	}
	return -1;
}

/* A source and destination pair host routing forwards (the destination in
 * weft_routed, the source in a local pod CIDR behind bridge), remembered so
 * a flow's packets cost one hash lookup instead of two trie lookups and a
 * FIB lookup. Both tries change only in Sync and Reconcile, which empty
 * this map at their end; an entry is trusted for at most ROUTED_PAIR_TTL_NS
 * all the same, so a packet that looked the tries up while a Sync changed
 * them is not remembered longer. With the pair goes the FIB's answer for
 * it when the FIB knew the neighbour's MAC (ifindex not 0): for the same
 * DSCP (IPv6: flow label and DSCP) and protocol, later packets
 * use it instead of asking again, so a route or neighbour change weft
 * does not make is followed within ROUTED_PAIR_TTL_NS (weft's own routes
 * change in Sync, which forgets). A TCP packet's pair is its flow (the
 * ports in the key, conntrack.h's flow_ports) and carries conntrack's
 * answer for it (ct; remembered_stack_flow); anything else is remembered
 * per address pair (ports 0). Only pairs host routing forwards are
 * remembered (PAIR_ROUTED), and the flows the transmit fast path sends
 * into the tunnel (PAIR_TUNNEL, forward.h's to_tunnel: conntrack's answer
 * and, for a packet encapsulated in the program, the FIB's answer for its
 * outer header, bridge 0), each kind only ever found by its own path. */
struct routed_pair_key {
	__u8 src[16]; /* as tunnel_key.addr */
	__u8 dst[16];
	__be16 sport; /* TCP only (flow_ports), else 0 */
	__be16 dport;
	__u32 kind;   /* PAIR_* */
};

/* routed_pair_key.kind */
#define PAIR_ROUTED 0 /* host routing's (hostroute.h) */
#define PAIR_TUNNEL 1 /* the tunnel's (to_tunnel) */

struct routed_pair_value {
	__u64 until;    /* bpf_ktime_get_coarse_ns() when it expires */
	__u32 bridge;   /* the local pod CIDR's bridge */
	__u32 ifindex;  /* the FIB's egress device; 0: no FIB answer remembered */
	__u32 flowinfo; /* what the FIB was asked with: IPv4 TOS or IPv6 flowinfo, ECN bits 0 */
	__u8 proto;     /* and the protocol */
	__u8 ct;        /* FLOW_CT_*: conntrack's answer for the TCP flow */
	__u8 pad[2];
	__u8 smac[6];   /* the FIB's source and neighbour MACs */
	__u8 dmac[6];
	__u32 pad2;
};

#define ROUTED_PAIR_TTL_NS (100ULL * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct routed_pair_key);
	__type(value, struct routed_pair_value);
} weft_routed_pairs SEC(".maps");


/* pair_remembered fills k's addresses (its ports and kind set by the
 * caller) and returns the live entry of weft_routed_pairs for it (now:
 * the packet's bpf_ktime_get_coarse_ns()), NULL when there is none or it
 * expired. */
static __always_inline struct routed_pair_value *pair_remembered(struct routed_pair_key *k, const struct tunnel_key *src,
								 const struct tunnel_key *dst, __u64 now)
{
	__builtin_memcpy(k->src, src->addr, 16);
	__builtin_memcpy(k->dst, dst->addr, 16);
	struct routed_pair_value *m = bpf_map_lookup_elem(&weft_routed_pairs, k);
	if (m && now < m->until)
		return m;
	return NULL;
}

/* fib_answer puts the FIB's answer for skb into fib (filled by fib_params;
 * flags as bpf_fib_lookup's) and returns its code: pv's remembered answer
 * when pv holds one asked the same (DSCP, IPv6 flow label, protocol; not
 * the ECN bits, which the FIB ignores, so a flow whose packets differ
 * only there keeps one answer), the egress device's MTU then checked here
 * as the FIB checks it (BPF_FIB_LKUP_RET_FRAG_NEEDED when too big), else
 * the FIB's own. A SUCCESS asked now is written into pv (*learned set:
 * the caller stores pv); NO_NEIGH is not remembered, and its MTU, which
 * the kernel checks only on success, is checked here. */
static __always_inline long fib_answer(struct __sk_buff *skb, struct bpf_fib_lookup *fib, struct routed_pair_value *pv,
				       __u32 flags, int *learned)
{
	__u32 asked = fib->family == WEFT_AF_INET ? fib->tos & 0xFC : fib->flowinfo & bpf_htonl(0x0FCFFFFF);
	__u32 mtu_len = 0;
	if (pv->ifindex && pv->flowinfo == asked && pv->proto == fib->l4_protocol) {
		if (bpf_check_mtu(skb, pv->ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return BPF_FIB_LKUP_RET_FRAG_NEEDED;
		fib->ifindex = pv->ifindex;
		__builtin_memcpy(fib->smac, pv->smac, ETH_ALEN);
		__builtin_memcpy(fib->dmac, pv->dmac, ETH_ALEN);
		return BPF_FIB_LKUP_RET_SUCCESS;
	}
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), flags);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (bpf_check_mtu(skb, fib->ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return BPF_FIB_LKUP_RET_FRAG_NEEDED;
	} else if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		pv->ifindex = fib->ifindex;
		pv->flowinfo = asked;
		pv->proto = fib->l4_protocol;
		__builtin_memcpy(pv->smac, fib->smac, ETH_ALEN);
		__builtin_memcpy(pv->dmac, fib->dmac, ETH_ALEN);
		*learned = 1;
	}
	return rc;
}

#endif
