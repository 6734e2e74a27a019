//go:build ignore

// weft's overlay datapath: two tc programs on the flow-based tunnel device.
//
// weft_egress runs on transmit: it looks the inner destination up in the
// tunnel map (LPM trie) and sets the tunnel key (remote endpoint, VNI, TTL)
// so the collect_md device knows where to send the frame. A miss is dropped.
//
// weft_ingress runs on receive (after decapsulation): it accepts a frame only
// when the outer source address is the endpoint that owns the inner source's
// prefix, then marks it PACKET_HOST so the stack routes it to the local pod
// (the inner destination MAC is the sender's device MAC, not ours). A packet
// for a local pod skips the stack: with a learned endpoint it enters the
// pod's namespace directly (bpf_redirect_peer), else the bridge
// (bpf_redirect_neigh).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define FLAG_IPV6_ENDPOINT (1U << 0)
#define TUNNEL_TTL 64

// Key of the tunnel map. Both families share one trie: an IPv4 prefix is
// stored as an IPv4-mapped IPv6 prefix (::ffff:a.b.c.d, prefixlen 96+bits).
struct tunnel_key {
	__u32 prefixlen;
	__u8 addr[16];
};

// Value of the tunnel map. endpoint is the underlay address in network
// order; an IPv4 endpoint is IPv4-mapped (last four bytes) and flags lacks
// FLAG_IPV6_ENDPOINT.
struct tunnel_value {
	__u8 endpoint[16];
	__u32 vni;
	__u32 flags;
};

// Per-CPU datapath statistics (one array slot).
struct stats {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 drop_no_tunnel;
	__u64 drop_spoofed;
	__u64 drop_other;
	__u64 rx_direct; // delivered straight into a local pod (redirect_peer)
	__u64 tx_direct; // sent from a pod's veth straight into the tunnel
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_stats SEC(".maps");

// Datapath configuration written by the loader (one array slot).
struct config {
	__u32 tunnel_ifindex; // overlay device; 0 disables the bridge fast path
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_config SEC(".maps");

// A local pod CIDR behind the bridge (key as in weft_tunnels).
struct local_value {
	__u32 bridge_ifindex;
	__u32 flags;
	__u8 gateway[16]; // the bridge's address: traffic to it goes to the stack
	__u8 broadcast[16]; // IPv4 directed broadcast: to the stack as well
	__u8 network[16]; // the overlay device's own address: to the stack
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16);
	__type(key, struct tunnel_key);
	__type(value, struct local_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_local SEC(".maps");

// A local pod endpoint learned by the loader from the kernel (the bridge's
// neighbour table and FDB): the host side of the pod's veth and the MACs to
// write, so a received packet enters the pod's namespace directly.
struct endpoint_key {
	__u8 addr[16]; // as in tunnel_key (IPv4-mapped for IPv4)
};

struct endpoint_value {
	__u32 ifindex; // host-side veth, a port of the bridge
	__u8 pod_mac[6]; // the pod's eth0
	__u8 gw_mac[6]; // the bridge (the pod's gateway)
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_endpoints SEC(".maps");

enum verdict_reason {
	REASON_NO_TUNNEL,
	REASON_SPOOFED,
	REASON_OTHER,
};

static __always_inline struct stats *stats_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weft_stats, &zero);
}

static __always_inline int drop(enum verdict_reason reason)
{
	struct stats *s = stats_slot();
	if (s) {
		switch (reason) {
		case REASON_NO_TUNNEL:
			s->drop_no_tunnel++;
			break;
		case REASON_SPOOFED:
			s->drop_spoofed++;
			break;
		default:
			s->drop_other++;
			break;
		}
	}
	return TC_ACT_SHOT;
}

// load_addr fills key with the inner source (src != 0) or destination
// address of the packet as a full-length prefix. It returns 0 on success,
// -1 for frames that are not IP or are truncated, 1 for IPv6 multicast.
static __always_inline int load_addr(struct __sk_buff *skb, struct tunnel_key *key, int src)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		__builtin_memset(key->addr, 0, 10);
		key->addr[10] = 0xff;
		key->addr[11] = 0xff;
		__u32 a = src ? ip->saddr : ip->daddr;
		__builtin_memcpy(&key->addr[12], &a, 4);
		key->prefixlen = 128;
		return 0;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (src)
			__builtin_memcpy(key->addr, &ip6->saddr, 16);
		else
			__builtin_memcpy(key->addr, &ip6->daddr, 16);
		key->prefixlen = 128;
		if (!src && key->addr[0] == 0xff)
			return 1;
		return 0;
	}
	return -1;
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u32 x[4], y[4];
	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

// dec_ttl decrements the IPv4 TTL or IPv6 hop limit as a router does.
// It returns -1 when the packet must go to the stack instead (expiry,
// truncation).
static __always_inline int dec_ttl(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->ttl <= 1)
			return -1; // the stack sends time exceeded
		__u16 old = *(__u16 *)&ip->ttl;
		ip->ttl--;
		__u16 new = *(__u16 *)&ip->ttl;
		bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old, new, 2);
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

// to_local_pod hands an accepted, decapsulated packet for a local pod
// straight to the pod bridge (bpf_redirect_neigh resolves the pod's MAC),
// skipping the node's routing and netfilter; anything else goes to the
// stack.
static __always_inline int to_local_pod(struct __sk_buff *skb)
{
	struct tunnel_key key = {};
	if (load_addr(skb, &key, 0) != 0)
		return TC_ACT_OK;
	struct local_value *lv = bpf_map_lookup_elem(&weft_local, &key);
	if (!lv || !lv->bridge_ifindex)
		return TC_ACT_OK;
	if (addr_eq(key.addr, lv->gateway) || addr_eq(key.addr, lv->broadcast) ||
	    addr_eq(key.addr, lv->network))
		return TC_ACT_OK;
	__u32 ifindex = lv->bridge_ifindex;
	struct endpoint_key ek;
	__builtin_memcpy(ek.addr, key.addr, 16);
	struct endpoint_value *ep = bpf_map_lookup_elem(&weft_endpoints, &ek);
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	if (!ep || !ep->ifindex)
		return bpf_redirect_neigh(ifindex, NULL, 0, 0);

	// A known endpoint: write the Ethernet header the bridge would have
	// delivered and enter the pod's namespace through the peer of its
	// host-side veth, skipping the bridge and the veth backlog.
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->gw_mac, ETH_ALEN);
	struct stats *s = stats_slot();
	if (s)
		s->rx_direct++;
	return bpf_redirect_peer(ep->ifindex, 0);
}

SEC("tc")
int weft_egress(struct __sk_buff *skb)
{
	struct tunnel_key key = {};
	int r = load_addr(skb, &key, 0);
	if (r != 0)
		return drop(REASON_OTHER);

	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return drop(REASON_NO_TUNNEL);

	struct bpf_tunnel_key tk = {};
	__u64 flags = 0;
	tk.tunnel_id = tv->vni;
	tk.tunnel_ttl = TUNNEL_TTL;
	if (tv->flags & FLAG_IPV6_ENDPOINT) {
		__builtin_memcpy(tk.remote_ipv6, tv->endpoint, 16);
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		__u32 a;
		__builtin_memcpy(&a, &tv->endpoint[12], 4);
		tk.remote_ipv4 = bpf_ntohl(a);
		// No outer UDP checksum on IPv4, as the kernel VXLAN driver does by
		// default (the inner packet carries its own checksums).
		flags = BPF_F_ZERO_CSUM_TX;
	}
	if (bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), flags) < 0)
		return drop(REASON_OTHER);

	struct stats *s = stats_slot();
	if (s) {
		s->tx_packets++;
		s->tx_bytes += skb->len;
	}
	return TC_ACT_OK;
}

SEC("tc")
int weft_ingress(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tk = {};
	int v6 = 0;

	if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) < 0) {
		if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), BPF_F_TUNINFO_IPV6) < 0)
			return drop(REASON_OTHER);
		v6 = 1;
	}

	struct tunnel_key key = {};
	if (load_addr(skb, &key, 1) != 0)
		return drop(REASON_OTHER);

	struct tunnel_value *tv = bpf_map_lookup_elem(&weft_tunnels, &key);
	if (!tv)
		return drop(REASON_SPOOFED);

	if (v6) {
		if (!(tv->flags & FLAG_IPV6_ENDPOINT))
			return drop(REASON_SPOOFED);
		__u32 ep[4];
		__builtin_memcpy(ep, tv->endpoint, 16);
		if (ep[0] != tk.remote_ipv6[0] || ep[1] != tk.remote_ipv6[1] ||
		    ep[2] != tk.remote_ipv6[2] || ep[3] != tk.remote_ipv6[3])
			return drop(REASON_SPOOFED);
	} else {
		__u32 a;
		if (tv->flags & FLAG_IPV6_ENDPOINT)
			return drop(REASON_SPOOFED);
		__builtin_memcpy(&a, &tv->endpoint[12], 4);
		if (bpf_ntohl(a) != tk.remote_ipv4)
			return drop(REASON_SPOOFED);
	}
	if (tk.tunnel_id != tv->vni)
		return drop(REASON_SPOOFED);

	bpf_skb_change_type(skb, PACKET_HOST);

	struct stats *s = stats_slot();
	if (s) {
		s->rx_packets++;
		s->rx_bytes += skb->len;
	}
	return to_local_pod(skb);
}

// weft_from_pods runs on ingress of the pod bridge (weft0), where frames
// from local pods to the gateway enter the node's stack. A packet whose
// destination has a tunnel entry skips the node's routing, netfilter and
// neighbour layers: the TTL is decremented as a router would, and the frame
// is redirected straight to the overlay device, whose egress program sets
// the tunnel key. Anything else (misses, TTL expiry, non-IP) goes on to the
// stack unchanged.
SEC("tc")
int weft_from_pods(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&weft_config, &zero);
	if (!cfg || !cfg->tunnel_ifindex)
		return TC_ACT_OK;

	struct tunnel_key key = {};
	if (load_addr(skb, &key, 0) != 0)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&weft_tunnels, &key))
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_dest[0] & 1)
		return TC_ACT_OK; // broadcast/multicast frames are not routed here

	// Too big for the overlay device: let the stack answer with
	// "fragmentation needed" / "packet too big" (bpf_check_mtu handles GSO).
	__u32 mtu_len = 0;
	if (bpf_check_mtu(skb, cfg->tunnel_ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;

	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

// weft_from_port runs on tcx ingress of a learned endpoint's host-side veth
// (see weft_endpoints): a frame from that pod (source IP, port and MAC all
// as learned) to the gateway MAC whose destination has a tunnel entry skips
// the bridge as well as the node's routing: MTU check and TTL decrement as
// in weft_from_pods, then straight to the overlay device. Anything else
// goes on to the bridge unchanged.
SEC("tc")
int weft_from_port(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&weft_config, &zero);
	if (!cfg || !cfg->tunnel_ifindex)
		return TC_ACT_OK;

	struct tunnel_key key = {};
	if (load_addr(skb, &key, 1) != 0)
		return TC_ACT_OK;
	struct endpoint_key ek;
	__builtin_memcpy(ek.addr, key.addr, 16);
	struct endpoint_value *ep = bpf_map_lookup_elem(&weft_endpoints, &ek);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	__u8 want[12], got[12];
	__builtin_memcpy(want, ep->gw_mac, 6);
	__builtin_memcpy(want + 6, ep->pod_mac, 6);
	__builtin_memcpy(got, eth->h_dest, 12);
	__u32 w[3], g[3];
	__builtin_memcpy(w, want, 12);
	__builtin_memcpy(g, got, 12);
	if (w[0] != g[0] || w[1] != g[1] || w[2] != g[2])
		return TC_ACT_OK;

	if (load_addr(skb, &key, 0) != 0)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&weft_tunnels, &key))
		return TC_ACT_OK;

	__u32 mtu_len = 0;
	if (bpf_check_mtu(skb, cfg->tunnel_ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	if (dec_ttl(skb) != 0)
		return TC_ACT_OK;
	struct stats *s = stats_slot();
	if (s)
		s->tx_direct++;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}
