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
#include "conntrack.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* in_pod_nets reports whether key's address (IPv4 as IPv4-mapped) lies in
 * one of g's pod networks (the key, not its bytes: see mapped). */
static __always_inline int in_pod_nets(const struct guard *g, const struct tunnel_key *key)
{
	__u32 x[4];
	__builtin_memcpy(x, key->addr, 16);
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

/* next_hop_is asks the FIB for the route to dst (16 bytes, IPv4-mapped
 * when v4) as if forwarding a packet from src that came in on the ingress
 * interface: 0 when it leaves through that interface to the neighbour
 * whose MAC is from, DROP_REVERSE_PATH_UNRESOLVED when it does but the
 * neighbour's MAC is not known, else DROP_REVERSE_PATH. */
static __always_inline enum drop_reason next_hop_is(struct __sk_buff *skb, const __u8 *dst, const __u8 *src,
						    int v4, const __u8 *from)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ingress_ifindex;
	if (v4) {
		fib.family = AF_INET;
		__builtin_memcpy(&fib.ipv4_dst, &dst[12], 4);
		__builtin_memcpy(&fib.ipv4_src, &src[12], 4);
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
		__builtin_memcpy(fib.ipv6_src, src, 16);
	}
	/* tot_len 0: the helper checks the packet against the MTU of the
	 * interface it came in on, which it fits. */
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (fib.ifindex != skb->ingress_ifindex)
		return DROP_REVERSE_PATH;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return DROP_REVERSE_PATH_UNRESOLVED;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || !mac_eq(fib.dmac, from))
		return DROP_REVERSE_PATH;
	return 0;
}

/* What check_reverse_path accepted, remembered: a frame from mac on
 * ifindex with source src (to dst) passed. The verdict depends on these
 * and on what only Sync changes (weft_owners) or what the kernel keeps
 * (routes, neighbours). Not pinned (each load starts empty), emptied by
 * every Sync and Reconcile, and trusted for at most RP_ACCEPTED_TTL_NS,
 * which bounds how long a route or neighbour change made by someone else
 * (a neighbour entry that moved to another MAC) goes unseen. Only
 * acceptances are remembered: a refusal is looked up again each time.
 * With an acceptance goes whether src is in weft_routed (host routing
 * hands the packet to the local pod), which also changes only in Sync,
 * and then dst's endpoint (weft_endpoints), which the loader changes
 * only with the pods, emptying this map when it does (refreshEndpoints).
 * A TCP packet is remembered by its flow (the ports in the key,
 * conntrack.h's flow_ports), with conntrack's answer for it (ct;
 * remembered_stack_flow); anything else per address pair (ports 0).
 * The in-program VXLAN receive (decap.h) keeps its inner flows here too,
 * under their own kind (RP_DECAP): the same endpoint and conntrack answer,
 * the same expiry and emptying, and no acceptance: what it checks about a
 * tunnel packet (check_outer) it checks on every packet, and a plain
 * packet never finds an RP_DECAP entry (check_reverse_path asks for
 * RP_PLAIN). */
struct rp_key {
	__u8 src[16];  /* the packet's source, as tunnel_key.addr */
	__u8 dst[16];  /* its destination: the FIB lookup's source */
	__u32 ifindex; /* the interface the frame came in on */
	__u8 mac[6];   /* the frame's source MAC (RP_DECAP: zero) */
	__be16 sport;  /* TCP only (flow_ports), else 0 */
	__be16 dport;
	__u16 kind;    /* RP_* */
};

/* rp_key.kind */
#define RP_PLAIN 0 /* a plain packet's acceptance by the underlay check */
#define RP_DECAP 1 /* a VXLAN packet's inner flow (decap.h): endpoint and ct only */

struct rp_value {
	__u64 until;       /* bpf_ktime_get_coarse_ns() when it expires */
	__u32 routed;      /* src is in weft_routed */
	__u32 ep_ifindex;  /* with routed: dst's endpoint (as endpoint_value), 0: none */
	__u8 pod_mac[6];
	__u8 gw_mac[6];
	__u8 ct;           /* FLOW_CT_*: conntrack's answer for the TCP flow */
	__u8 pad[3];
};

#define RP_ACCEPTED_TTL_NS (100ULL * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rp_key);
	__type(value, struct rp_value);
} weft_rp_accepted SEC(".maps");

/* rp_remembered is the live entry of weft_rp_accepted for k (now: the
 * packet's bpf_ktime_get_coarse_ns()), NULL when there is none or it
 * expired. */
static __always_inline struct rp_value *rp_remembered(const struct rp_key *k, __u64 now)
{
	struct rp_value *m = bpf_map_lookup_elem(&weft_rp_accepted, k);
	if (m && now < m->until)
		return m;
	return NULL;
}

/* rp_endpoint writes dst's endpoint (weft_endpoints) into v; 0 when there
 * is none (v's endpoint stays as it was). */
static __always_inline int rp_endpoint(struct rp_value *v, const __u8 dst[16])
{
	struct endpoint_value *ep = endpoint(dst);
	if (!ep)
		return 0;
	v->ep_ifindex = ep->ifindex;
	__builtin_memcpy(v->pod_mac, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(v->gw_mac, ep->gw_mac, ETH_ALEN);
	return 1;
}

/* reverse_path_verdict accepts (0) a packet with a pod source src (to dst)
 * only from the neighbour this node routes that source through (the owner
 * itself when adjacent, the router when the network routes: gateway, BGP),
 * or from the neighbour it routes the source's owner node through: where
 * the network routes pods, a node on the same segment answers this node's
 * own address directly (asymmetric, and legitimate). The kernel's
 * rp_filter checks the interface only. */
static __always_inline enum drop_reason reverse_path_verdict(struct __sk_buff *skb, const struct tunnel_key *src,
							     const struct tunnel_key *dst, int v4,
							     const __u8 *from)
{
	enum drop_reason bad = next_hop_is(skb, src->addr, dst->addr, v4, from);
	if (!bad)
		return 0;
	struct tunnel_value *owner = bpf_map_lookup_elem(&weft_owners, src);
	if (owner) {
		__u8 none[16] = {};
		enum drop_reason via_owner =
			next_hop_is(skb, owner->endpoint, none, !(owner->flags & FLAG_IPV6_ENDPOINT), from);
		if (!via_owner)
			return 0;
		if (via_owner == DROP_REVERSE_PATH_UNRESOLVED)
			bad = via_owner;
	}
	return bad;
}

/* What check_reverse_path found out about a packet it accepted, for
 * host routing (host_route_in). */
struct rp_memo {
	struct flow_ports fp; /* the packet's flow (flow_ports) */
	struct rp_value *m;   /* the remembered acceptance; NULL: made now */
	int routed;           /* src is in weft_routed */
};

/* check_reverse_path is the underlay check for a pod source
 * (reverse_path_verdict), with its acceptances remembered in
 * weft_rp_accepted: a steady flow costs a hash lookup per packet instead
 * of a FIB lookup, and the trie lookup of weft_routed (r->routed), the
 * destination's endpoint and conntrack's answer come with it (r->m). */
static __always_inline int check_reverse_path(struct __sk_buff *skb, const struct tunnel_key *src,
					      const struct tunnel_key *dst, struct rp_memo *r)
{
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_REVERSE_PATH);
	struct rp_key k = {};
	__builtin_memcpy(k.src, src->addr, 16);
	__builtin_memcpy(k.dst, dst->addr, 16);
	__builtin_memcpy(k.mac, eth->h_source, ETH_ALEN);
	k.ifindex = skb->ingress_ifindex;
	int v4 = eth->h_proto == bpf_htons(ETH_P_IP);
	flow_ports(skb, 0, &r->fp);
	k.sport = r->fp.sport;
	k.dport = r->fp.dport;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct rp_value *m = rp_remembered(&k, now);
	if (m) {
		r->routed = m->routed;
		r->m = m;
		return TC_ACT_OK;
	}
	enum drop_reason bad = reverse_path_verdict(skb, src, dst, v4, k.mac);
	if (bad)
		return drop(bad);
	struct rp_value v = {.until = now + RP_ACCEPTED_TTL_NS};
	v.routed = bpf_map_lookup_elem(&weft_routed, src) != NULL;
	if (v.routed)
		rp_endpoint(&v, dst->addr);
	bpf_map_update_elem(&weft_rp_accepted, &k, &v, BPF_ANY);
	r->routed = v.routed;
	r->m = NULL;
	return TC_ACT_OK;
}

/* pod_addr's answer about one of a frame's addresses, as bits. */
#define POD_ADDR_OK (1 << 0)     /* load_addr: ADDR_OK */
#define POD_ADDR_POD (1 << 1)    /* in a pod network */
#define POD_ADDR_MAPPED (1 << 2) /* in a pod network, from an IPv4-mapped IPv6 address (never a pod's) */
#define POD_ADDR_DST_SHIFT 4     /* pod_addrs: where the destination's bits start */

/* pod_addr loads the frame's source or destination (side) into key (zero
 * on entry; it stays zero when the frame is not IP, and then in no pod
 * network) and says what it is to g's pod networks (POD_ADDR_* bits). */
static __always_inline int pod_addr(struct __sk_buff *skb, const struct guard *g, struct tunnel_key *key,
				    enum addr_side side)
{
	enum addr_result r = load_addr(skb, key, side);
	int bits = r == ADDR_OK ? POD_ADDR_OK : 0;
	if (in_pod_nets(g, key))
		bits |= r == ADDR_IPV4_MAPPED ? POD_ADDR_MAPPED : POD_ADDR_POD;
	return bits;
}

/* pod_addrs is pod_addr for the frame's source (into src; its bits at the
 * bottom) and destination (into dst; its bits shifted by
 * POD_ADDR_DST_SHIFT). A global function (common.h): inlined, load_addr's
 * results and both pod-network answers, each one of a few constants,
 * stayed live across the reverse path check and host routing, and the
 * verifier walked weft_from_underlay's 27,501 instructions instead of
 * about 2,000. One function for both addresses, not one per address: a
 * call less per packet, for a few hundred instructions more to verify. */
__noinline int pod_addrs(struct __sk_buff *skb, const struct guard *g, struct tunnel_key *src, struct tunnel_key *dst)
{
	if (!g || !src || !dst)
		return 0;
	int s = pod_addr(skb, g, src, ADDR_SRC);
	return s | pod_addr(skb, g, dst, ADDR_DST) << POD_ADDR_DST_SHIFT;
}

#endif
