/* Host routing in eBPF for unencapsulated pod traffic (native, hybrid and
 * bgp modes), the way Cilium's host routing does it: a packet from a local
 * pod to a remote pod CIDR that the node routes natively leaves through
 * the FIB's egress device (bpf_fib_lookup, then bpf_redirect with the
 * neighbour's MAC or bpf_redirect_neigh), and a packet from a remote pod
 * arriving on the underlay enters the local pod directly (to_local_pod).
 * Both skip the node's IP forwarding and its netfilter FORWARD hooks; the
 * loader leaves weft_routed empty when the cluster asks for host routing
 * through the stack. */
#ifndef WEFT_HOSTROUTE_H
#define WEFT_HOSTROUTE_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "forward.h"
#include "underlay.h"

#define WEFT_AF_INET 2
#define WEFT_AF_INET6 10

/* Per-CPU host routing statistics (one array slot). */
struct host_stats {
	__u64 tx_routed; /* from a local pod to the underlay past the stack */
	__u64 rx_routed; /* from the underlay into a local pod past the stack */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_host_stats SEC(".maps");

static __always_inline struct host_stats *host_stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weft_host_stats, &zero);
}

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
 * remembered. */
struct routed_pair_key {
	__u8 src[16]; /* as tunnel_key.addr */
	__u8 dst[16];
	__be16 sport; /* TCP only (flow_ports), else 0 */
	__be16 dport;
};

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

/* routed_pair finds what is remembered about src to dst (k's ports filled
 * by the caller), or looks it up and remembers it: the remembered entry
 * (in the map: the caller may write its ct in place) when host routing
 * forwards src to dst, else NULL, with v filled in either case (v->bridge
 * the bridge of src's local pod CIDR). A pair looked up now has no FIB
 * answer yet (v->ifindex 0) nor conntrack's (v->ct); it is remembered, and
 * returned as v alone (*fresh set). */
static __always_inline struct routed_pair_value *routed_pair(const struct tunnel_key *src, const struct tunnel_key *dst,
							     struct routed_pair_key *k, struct routed_pair_value *v,
							     __u64 now, int *fresh)
{
	__builtin_memcpy(k->src, src->addr, 16);
	__builtin_memcpy(k->dst, dst->addr, 16);
	struct routed_pair_value *m = bpf_map_lookup_elem(&weft_routed_pairs, k);
	if (m && now < m->until) {
		__builtin_memcpy(v, m, sizeof(*v));
		return m;
	}
	if (!bpf_map_lookup_elem(&weft_routed, dst))
		return NULL;
	struct local_value *lv = bpf_map_lookup_elem(&weft_local, src);
	if (!lv || !lv->bridge_ifindex)
		return NULL;
	__builtin_memset(v, 0, sizeof(*v));
	v->until = now + ROUTED_PAIR_TTL_NS;
	v->bridge = lv->bridge_ifindex;
	bpf_map_update_elem(&weft_routed_pairs, k, v, BPF_ANY);
	*fresh = 1;
	return v;
}

/* host_route_out forwards a packet from a local pod (src, the caller's
 * key: in a local pod CIDR) to a remote pod CIDR in weft_routed (dst) the
 * way the node's routing would, without it: FIB lookup as if the packet
 * had arrived on the pod bridge (or the remembered answer, see
 * weft_routed_pairs, with the egress device's MTU checked per packet), TTL
 * decremented, then straight to the egress device, with the neighbour's
 * MAC when the FIB knows it, else through bpf_redirect_neigh. Anything
 * else, a lookup that does not forward (unreachable, too big, local) and
 * an expiring TTL go to the stack unchanged, which answers with the ICMP
 * error. */
static __always_inline int host_route_out(struct __sk_buff *skb, const struct tunnel_key *src,
					  const struct tunnel_key *dst)
{
	struct flow_ports fp = {};
	flow_ports(skb, &fp);
	struct routed_pair_key pk = {.sport = fp.sport, .dport = fp.dport};
	struct routed_pair_value pv;
	__u64 now = bpf_ktime_get_coarse_ns();
	int fresh = 0;
	struct routed_pair_value *m = routed_pair(src, dst, &pk, &pv, now, &fresh);
	if (!m)
		return TC_ACT_OK;
	/* In place in the remembered entry; in pv for a pair just looked
	 * up, which the FIB's answer below writes back. */
	if (remembered_stack_flow(skb, &fp, fresh ? &pv.ct : &m->ct))
		return TC_ACT_OK;

	struct bpf_fib_lookup fib = {};
	if (fib_params(skb, &fib, pv.bridge) < 0)
		return TC_ACT_OK;
	/* What the FIB is asked with, less the ECN bits, which it ignores (so
	 * a flow whose packets differ only there keeps one answer). */
	__u32 asked = fib.family == WEFT_AF_INET ? fib.tos & 0xFC : fib.flowinfo & bpf_htonl(0x0FCFFFFF);
	long rc;
	if (pv.ifindex && pv.flowinfo == asked && pv.proto == fib.l4_protocol) {
		/* The FIB checks the MTU on success; so does this. */
		__u32 mtu_len = 0;
		if (bpf_check_mtu(skb, pv.ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return TC_ACT_OK;
		rc = BPF_FIB_LKUP_RET_SUCCESS;
		fib.ifindex = pv.ifindex;
		__builtin_memcpy(fib.smac, pv.smac, ETH_ALEN);
		__builtin_memcpy(fib.dmac, pv.dmac, ETH_ALEN);
	} else {
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
			return TC_ACT_OK;
		if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			/* The kernel checked the MTU only on success. */
			__u32 mtu_len = 0;
			if (bpf_check_mtu(skb, fib.ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
				return TC_ACT_OK;
		} else {
			if (!fresh)
				pv.ct = m->ct; /* as remembered_stack_flow left it */
			pv.ifindex = fib.ifindex;
			pv.flowinfo = asked;
			pv.proto = fib.l4_protocol;
			__builtin_memcpy(pv.smac, fib.smac, ETH_ALEN);
			__builtin_memcpy(pv.dmac, fib.dmac, ETH_ALEN);
			bpf_map_update_elem(&weft_routed_pairs, &pk, &pv, BPF_ANY);
		}
	}
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;

	struct host_stats *s = host_stats();
	if (s)
		s->tx_routed++;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};
		nh.nh_family = fib.family;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16); /* ipv4_nh shares the first 4 bytes */
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}

/* to_remembered_pod is to_local_pod for a packet whose acceptance the
 * underlay check remembered with its destination's endpoint (m, in the
 * map): the same steps (conntrack, TTL, the MACs the bridge would have
 * written, bpf_redirect_peer into the pod), without the endpoint lookup,
 * and with conntrack's answer remembered for a steady TCP flow (fp). */
static __always_inline int to_remembered_pod(struct __sk_buff *skb, struct rp_value *m, const struct flow_ports *fp)
{
	if (remembered_stack_flow(skb, fp, &m->ct))
		return TC_ACT_OK;
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_NOT_IP);
	__builtin_memcpy(eth->h_dest, m->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, m->gw_mac, ETH_ALEN);
	count_rx_direct();
	return bpf_redirect_peer(m->ep_ifindex, 0);
}

/* host_route_in hands a plain packet that arrived on the underlay from a
 * remote pod CIDR in weft_routed (r->routed: the underlay check's answer,
 * check_reverse_path) to a local pod past the stack (to_remembered_pod
 * with a remembered endpoint, else to_local_pod, dst the caller's key).
 * Anything else goes to the stack. */
static __always_inline int host_route_in(struct __sk_buff *skb, const struct tunnel_key *dst, struct rp_memo *r)
{
	if (!r->routed)
		return TC_ACT_OK;
	struct rp_value *m = r->m;
	int verdict;
	if (m && m->ep_ifindex)
		verdict = to_remembered_pod(skb, m, &r->fp);
	else
		verdict = to_local_pod(skb, dst);
	if (verdict == TC_ACT_REDIRECT) {
		struct host_stats *s = host_stats();
		if (s)
			s->rx_routed++;
	}
	return verdict;
}

#endif
