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

/* to_tunnel is the tail of both transmit fast paths: a packet for a remote
 * pod (tv, the caller's one lookup) that fits the overlay device
 * (cfg->tunnel_ifindex) gets its TTL decremented and goes into the tunnel,
 * skipping the node's routing, netfilter and neighbour layers: with
 * CONFIG_ENCAP towards an IPv4 endpoint encapsulated here and straight out
 * of the underlay (encap_vxlan4), else with its tunnel key set to the
 * overlay device. Too big (bpf_check_mtu, GSO aware) or TTL expiring: to
 * the stack unchanged, which answers with an ICMP error. */
static __always_inline int to_tunnel(struct __sk_buff *skb, const struct config *cfg,
				     const struct tunnel_value *tv)
{
	__u32 tunnel_ifindex = cfg->tunnel_ifindex;
	__u32 mtu_len = 0;
	if (bpf_check_mtu(skb, tunnel_ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	if (stack_flow(skb, 0))
		return TC_ACT_OK;
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	/* IPv6 endpoints keep the device, which computes the outer UDP
	 * checksum IPv6 asks for (encap.h writes none). */
	if ((cfg->flags & CONFIG_ENCAP) && !(tv->flags & FLAG_IPV6_ENDPOINT)) {
		int verdict = encap_vxlan4(skb, cfg, tv);
		if (verdict >= 0)
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
