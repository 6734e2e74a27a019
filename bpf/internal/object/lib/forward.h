/* Forwarding without the node's stack: what a router does to a packet
 * (TTL), and the two fast-path tails (into the tunnel, into a local pod). */
#ifndef WEFT_FORWARD_H
#define WEFT_FORWARD_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"
#include "tunnel.h"
#include "conntrack.h"
#include "encap.h"
#include "pairs.h"

/* dec_ttl decrements the IPv4 TTL or IPv6 hop limit as a router does. It
 * returns -1 when the packet must go to the stack instead (expiry, which
 * the stack answers with "time exceeded", or truncation). Callers have
 * checked that the frame is IPv4 or IPv6. */
static __always_inline int dec_ttl(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->ttl <= 1)
			return -1;
		/* The kernel's ip_decrease_ttl: the TTL is the high byte of
		 * its 16-bit word, so the checksum grows by 0x0100 (RFC 1624),
		 * without a helper call. */
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xFFFF));
		ip->ttl--;
		return 0;
	}
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit--;
	return 0;
}

/* tunnel_out sends a packet encap_vxlan4 encapsulated out of the underlay
 * interface: with the FIB's answer for its outer header (fib_answer: an
 * output lookup restricted to the underlay interface, remembered with the
 * flow, pk and pv, m its entry if it had one) straight to the next hop's
 * MAC (bpf_redirect); without one (the neighbour not resolved, any other
 * answer) through bpf_redirect_neigh, where the kernel routes the outer
 * destination out of the underlay and resolves the next hop's MAC (a peer
 * on the segment, or the gateway towards it). */
static __always_inline int tunnel_out(struct __sk_buff *skb, const struct config *cfg, struct routed_pair_key *pk,
				      struct routed_pair_value *pv, const struct routed_pair_value *m)
{
	__u32 underlay = cfg->underlay_ifindex;
	struct bpf_fib_lookup fib = {};
	if (fib_params(skb, &fib, underlay) == 0) {
		int learned = 0;
		long rc = fib_answer(skb, &fib, pv, BPF_FIB_LOOKUP_OUTPUT, &learned);
		struct ethhdr *eth = eth_hdr(skb);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex == underlay && eth) {
			if (learned) {
				if (m)
					pv->ct = m->ct; /* as remembered_stack_flow left it */
				bpf_map_update_elem(&weft_routed_pairs, pk, pv, BPF_ANY);
			}
			__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
			return bpf_redirect(underlay, 0);
		}
	}
	return bpf_redirect_neigh(underlay, NULL, 0, 0);
}

/* to_tunnel is the tail of both transmit fast paths: a packet from src to
 * a remote pod dst (tv, the caller's one lookup) that fits the overlay
 * device (cfg->tunnel_ifindex) gets its TTL decremented and goes into the
 * tunnel, skipping the node's routing, netfilter and neighbour layers:
 * with CONFIG_ENCAP towards an IPv4 endpoint encapsulated here and
 * straight out of the underlay (encap_vxlan4, tunnel_out), else with its
 * tunnel key set to the overlay device. Too big (bpf_check_mtu, GSO aware)
 * or TTL expiring: to the stack unchanged, which answers with an ICMP
 * error. Conntrack's answer is remembered per TCP flow as host routing's
 * is (weft_routed_pairs, PAIR_TUNNEL; remembered_stack_flow). */
static __always_inline int to_tunnel(struct __sk_buff *skb, const struct config *cfg, const struct tunnel_key *src,
				     const struct tunnel_key *dst, const struct tunnel_value *tv)
{
	__u32 tunnel_ifindex = cfg->tunnel_ifindex;
	__u32 mtu_len = 0;
	if (bpf_check_mtu(skb, tunnel_ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	struct flow_ports fp = {};
	flow_ports(skb, 0, &fp);
	struct routed_pair_key pk = {.sport = fp.sport, .dport = fp.dport, .kind = PAIR_TUNNEL};
	__u64 now = bpf_ktime_get_coarse_ns();
	struct routed_pair_value pv = {.until = now + ROUTED_PAIR_TTL_NS};
	struct routed_pair_value *m = pair_remembered(&pk, src, dst, now);
	if (m)
		__builtin_memcpy(&pv, m, sizeof(pv));
	/* In place in the remembered entry; in pv for one made now. */
	int stack = remembered_stack_flow(skb, 0, &fp, m ? &m->ct : &pv.ct);
	if (!m)
		bpf_map_update_elem(&weft_routed_pairs, &pk, &pv, BPF_ANY);
	if (stack)
		return TC_ACT_OK;
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	/* IPv6 endpoints keep the device, which computes the outer UDP
	 * checksum IPv6 asks for (encap.h writes none). */
	if ((cfg->flags & CONFIG_ENCAP) && !(tv->flags & FLAG_IPV6_ENDPOINT)) {
		int verdict = encap_vxlan4(skb, cfg, tv);
		if (verdict == 0)
			return tunnel_out(skb, cfg, &pk, &pv, m);
		if (verdict > 0)
			return verdict;
	}
	/* If the key cannot be set here, the device's egress program looks
	 * the destination up itself (and drops with DROP_TUNNEL_KEY if the
	 * kernel refuses again). */
	set_tunnel(skb, tv);
	return bpf_redirect(tunnel_ifindex, 0);
}

/* to_local_pod hands an accepted, decapsulated packet for a local pod past
 * the node's routing and netfilter (dst: its destination, the caller's key,
 * loaded with ADDR_OK): with a learned endpoint it enters the
 * pod's namespace directly through the peer of its host-side veth
 * (bpf_redirect_peer, skipping the bridge and the veth backlog), else it
 * goes to the pod bridge (bpf_redirect_neigh resolves the pod's MAC).
 * Anything else, and addresses the node itself answers for, goes to the
 * stack. */
static __always_inline int to_local_pod(struct __sk_buff *skb, const struct tunnel_key *dst)
{
	/* A learned endpoint is a pod address inside a local pod CIDR, never
	 * its gateway, network or broadcast address (the loader derives the
	 * endpoints from weft_pods that way, and empties both maps together):
	 * a hit answers what the trie lookup below would, without it. */
	struct endpoint_value *ep = endpoint(dst->addr);
	__u32 bridge = 0;
	if (!ep) {
		struct local_value *lv = bpf_map_lookup_elem(&weft_local, dst);
		if (!lv)
			return TC_ACT_OK; /* the loader fills the map only with the bridge known */
		if (addr_eq(dst->addr, lv->gateway) || addr_eq(dst->addr, lv->broadcast) ||
		    addr_eq(dst->addr, lv->network))
			return TC_ACT_OK;
		bridge = lv->bridge_ifindex;
	}
	if (stack_flow(skb, 0))
		return TC_ACT_OK;
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	if (!ep)
		return bpf_redirect_neigh(bridge, NULL, 0, 0);

	/* The Ethernet header the bridge would have delivered. */
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return drop(DROP_NOT_IP);
	__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->gw_mac, ETH_ALEN);
	count_rx_direct();
	return bpf_redirect_peer(ep->ifindex, 0);
}

#endif
