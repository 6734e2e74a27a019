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
#include "pairs.h"

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
	struct routed_pair_value *m = pair_remembered(k, src, dst, now);
	if (m) {
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
	flow_ports(skb, 0, &fp);
	struct routed_pair_key pk = {.sport = fp.sport, .dport = fp.dport, .kind = PAIR_ROUTED};
	struct routed_pair_value pv;
	__u64 now = bpf_ktime_get_coarse_ns();
	int fresh = 0;
	struct routed_pair_value *m = routed_pair(src, dst, &pk, &pv, now, &fresh);
	if (!m)
		return TC_ACT_OK;
	/* In place in the remembered entry; in pv for a pair just looked
	 * up, which the FIB's answer below writes back. */
	if (remembered_stack_flow(skb, 0, &fp, fresh ? &pv.ct : &m->ct))
		return TC_ACT_OK;

	struct bpf_fib_lookup fib = {};
	if (fib_params(skb, &fib, pv.bridge) < 0)
		return TC_ACT_OK;
	int learned = 0;
	long rc = fib_answer(skb, &fib, &pv, 0, &learned);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (learned) {
		if (!fresh)
			pv.ct = m->ct; /* as remembered_stack_flow left it */
		bpf_map_update_elem(&weft_routed_pairs, &pk, &pv, BPF_ANY);
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
	if (remembered_stack_flow(skb, 0, fp, &m->ct))
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
