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

#define WEFT_AF_INET 2
#define WEFT_AF_INET6 10

/* Remote pod CIDRs this node routes without encapsulation, key as in
 * weft_tunnels; the value is reserved (0). Empty: host routing is off. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, struct tunnel_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_routed SEC(".maps");

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
 * a flow's packets cost one hash lookup instead of two trie lookups. Both
 * tries change only in Sync and Reconcile, which empty this map at their
 * end; an entry is trusted for at most ROUTED_PAIR_TTL_NS all the same, so
 * a packet that looked the tries up while a Sync changed them is not
 * remembered longer. Only pairs host routing forwards are remembered. */
struct routed_pair_key {
	__u8 src[16]; /* as tunnel_key.addr */
	__u8 dst[16];
};

struct routed_pair_value {
	__u64 until;  /* bpf_ktime_get_coarse_ns() when it expires */
	__u32 bridge; /* the local pod CIDR's bridge */
	__u32 pad;
};

#define ROUTED_PAIR_TTL_NS (100ULL * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct routed_pair_key);
	__type(value, struct routed_pair_value);
} weft_routed_pairs SEC(".maps");

/* routed_pair returns the bridge ifindex of src's local pod CIDR when host
 * routing forwards src to dst (dst in weft_routed), else 0. */
static __always_inline __u32 routed_pair(const struct tunnel_key *src, const struct tunnel_key *dst)
{
	struct routed_pair_key k;
	__builtin_memcpy(k.src, src->addr, 16);
	__builtin_memcpy(k.dst, dst->addr, 16);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct routed_pair_value *m = bpf_map_lookup_elem(&weft_routed_pairs, &k);
	if (m && now < m->until)
		return m->bridge;
	if (!bpf_map_lookup_elem(&weft_routed, dst))
		return 0;
	struct local_value *lv = bpf_map_lookup_elem(&weft_local, src);
	if (!lv || !lv->bridge_ifindex)
		return 0;
	struct routed_pair_value v = {.until = now + ROUTED_PAIR_TTL_NS, .bridge = lv->bridge_ifindex};
	bpf_map_update_elem(&weft_routed_pairs, &k, &v, BPF_ANY);
	return v.bridge;
}

/* host_route_out forwards a packet from a local pod (source in a local pod
 * CIDR) to a remote pod CIDR in weft_routed (dst, the caller's key) the way
 * the node's routing would, without it: FIB lookup as if the packet had
 * arrived on the pod bridge, TTL decremented, then straight to the egress
 * device, with the neighbour's MAC when the FIB knows it, else through
 * bpf_redirect_neigh. Anything else, a lookup that does not forward
 * (unreachable, too big, local) and an expiring TTL go to the stack
 * unchanged, which answers with the ICMP error. */
static __always_inline int host_route_out(struct __sk_buff *skb, const struct tunnel_key *dst)
{
	struct tunnel_key src = {};
	if (load_addr(skb, &src, ADDR_SRC) != ADDR_OK)
		return TC_ACT_OK;
	__u32 bridge = routed_pair(&src, dst);
	if (!bridge)
		return TC_ACT_OK;
	if (stack_flow(skb))
		return TC_ACT_OK;

	struct bpf_fib_lookup fib = {};
	if (fib_params(skb, &fib, bridge) < 0)
		return TC_ACT_OK;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The kernel checked the MTU only on success. */
		__u32 mtu_len = 0;
		if (bpf_check_mtu(skb, fib.ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return TC_ACT_OK;
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

/* host_route_in hands a plain packet that arrived on the underlay from a
 * remote pod CIDR in weft_routed to a local pod past the stack
 * (to_local_pod). Anything else goes to the stack. */
static __always_inline int host_route_in(struct __sk_buff *skb)
{
	struct tunnel_key src = {};
	if (load_addr(skb, &src, ADDR_SRC) != ADDR_OK)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&weft_routed, &src))
		return TC_ACT_OK;
	int verdict = to_local_pod(skb);
	if (verdict == TC_ACT_REDIRECT) {
		struct host_stats *s = host_stats();
		if (s)
			s->rx_routed++;
	}
	return verdict;
}

#endif
