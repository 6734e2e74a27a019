//go:build ignore

// weft's datapath: four tc programs. The headers in lib/ hold what they
// share: the maps (maps.h), statistics and drop reasons (stats.h), packet
// addresses (addr.h), the tunnel key (tunnel.h) and forwarding past the
// node's stack (forward.h).
//
// On the flow-based overlay device:
//   weft_egress   sets the tunnel key of a packet for a remote pod from the
//                 tunnel map (LPM trie) so the collect_md device knows where
//                 to send it; a miss is dropped.
//   weft_ingress  accepts a decapsulated packet only when its outer source
//                 is the endpoint that owns the inner source's prefix, marks
//                 it PACKET_HOST (its destination MAC is the sender's device
//                 MAC) and hands a packet for a local pod past the stack.
// The transmit fast path, from local pods straight into the tunnel:
//   weft_from_pods  on ingress of the pod bridge (weft0);
//   weft_from_port  on ingress of the host side of each learned pod veth,
//                   skipping the bridge as well.

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/stats.h"
#include "lib/addr.h"
#include "lib/tunnel.h"
#include "lib/forward.h"

char __license[] SEC("license") = "Dual MIT/GPL";

SEC("tc")
int weft_egress(struct __sk_buff *skb)
{
	/* Set by the transmit fast path, from its own lookup. */
	if (tunnel_key_set(skb)) {
		count_tx(skb);
		return TC_ACT_OK;
	}

	struct tunnel_key key = {};
	switch (load_addr(skb, &key, ADDR_DST)) {
	case ADDR_OK:
		break;
	case ADDR_IPV6_MULTICAST:
		return drop(DROP_IPV6_MULTICAST);
	default:
		return drop(DROP_NOT_IP);
	}
	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return drop(DROP_NO_TUNNEL);
	if (set_tunnel(skb, tv) < 0)
		return drop(DROP_TUNNEL_KEY);
	count_tx(skb);
	return TC_ACT_OK;
}

SEC("tc")
int weft_ingress(struct __sk_buff *skb)
{
	struct outer o = {};
	if (read_outer(skb, &o) < 0)
		return drop(DROP_NO_TUNNEL_INFO);

	struct tunnel_key key = {};
	if (load_addr(skb, &key, ADDR_SRC) != ADDR_OK)
		return drop(DROP_NOT_IP);
	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return drop(DROP_UNKNOWN_SOURCE);
	enum drop_reason bad = check_outer(&o, tv);
	if (bad)
		return drop(bad);

	bpf_skb_change_type(skb, PACKET_HOST);
	count_rx(skb);
	return to_local_pod(skb);
}

// weft_from_pods runs on ingress of the pod bridge, where frames from local
// pods to the gateway enter the node's stack. A unicast packet whose
// destination has a tunnel entry goes straight into the tunnel (to_tunnel);
// anything else goes on to the stack unchanged.
SEC("tc")
int weft_from_pods(struct __sk_buff *skb)
{
	struct config *cfg = config();
	if (!cfg || !cfg->tunnel_ifindex)
		return TC_ACT_OK;

	struct tunnel_key key = {};
	if (load_addr(skb, &key, ADDR_DST) != ADDR_OK)
		return TC_ACT_OK;
	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return TC_ACT_OK;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth || (eth->h_dest[0] & 1))
		return TC_ACT_OK; /* broadcast/multicast frames are not routed here */
	return to_tunnel(skb, cfg->tunnel_ifindex, tv);
}

// weft_from_port runs on ingress of a learned endpoint's host-side veth (see
// weft_endpoints): a frame from that pod (source IP, port and MAC all as
// learned) to the gateway MAC whose destination has a tunnel entry skips
// the bridge as well as the node's stack (to_tunnel). Anything else goes on
// to the bridge unchanged.
SEC("tc")
int weft_from_port(struct __sk_buff *skb)
{
	struct config *cfg = config();
	if (!cfg || !cfg->tunnel_ifindex)
		return TC_ACT_OK;

	struct tunnel_key key = {};
	if (load_addr(skb, &key, ADDR_SRC) != ADDR_OK)
		return TC_ACT_OK;
	struct endpoint_value *ep = endpoint(key.addr);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_OK;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth || !mac_eq(eth->h_dest, ep->gw_mac) || !mac_eq(eth->h_source, ep->pod_mac))
		return TC_ACT_OK;

	if (load_addr(skb, &key, ADDR_DST) != ADDR_OK)
		return TC_ACT_OK;
	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return TC_ACT_OK;
	int verdict = to_tunnel(skb, cfg->tunnel_ifindex, tv);
	if (verdict == TC_ACT_REDIRECT)
		count_tx_direct();
	return verdict;
}
