/* Flows the node's stack knows: a TCP or UDP packet of a connection that
 * netfilter's conntrack tracks on this node went through the stack before
 * (a pod's packet to a Service address that kube-proxy DNATed, a reply to
 * a hostPort, anything the node itself started) and may need its NAT
 * reversed there, so the fast paths leave it to the stack. Pod-to-pod
 * flows that take the fast paths both ways never enter conntrack. */
#ifndef WEFT_CONNTRACK_H
#define WEFT_CONNTRACK_H

#include "common.h"
#include "addr.h"

#define WEFT_IPPROTO_TCP 6
#define WEFT_IPPROTO_UDP 17
#define WEFT_CURRENT_NETNS (-1)

/* The furthest Ethernet header stack_flow looks at: past an IPv6 VXLAN
 * packet's outer headers (decap.h). */
#define STACK_FLOW_MAX_OFF 0xff

/* The kernel's struct bpf_ct_opts (net/netfilter/nf_conntrack_bpf.c). */
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

/* Opaque here: only passed back to bpf_ct_release. A struct (not a
 * forward declaration) so the loader finds it compatible with the
 * kernel's. */
struct nf_conn {
	__u64 opaque;
};

/* Weak: a kernel without conntrack's kfuncs (nf_conntrack not loaded)
 * still loads the programs, and then has no conntrack to consult. */
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

/* libbpf's bpf_ksym_exists (newer than Debian's libbpf headers). */
#define weft_ksym_exists(sym)                                                                   \
	({                                                                                       \
		_Static_assert(!__builtin_constant_p(!!sym), #sym " should be marked as __weak"); \
		!!sym;                                                                           \
	})

/* stack_flow reports whether conntrack has an entry for the TCP or UDP
 * flow (either direction) of the packet whose Ethernet header is at off
 * (0, or past the outer headers of a tunnel packet, decap.h), in which
 * case the caller hands the packet to the stack. IPv4 options and IPv6
 * extension headers are not parsed (such packets are looked up by no flow
 * and stay fast). A global function (common.h): each fast path verifies
 * it once, not once per family and path that reaches it. */
__noinline int stack_flow(struct __sk_buff *skb, __u32 off)
{
	if (!weft_ksym_exists(bpf_skb_ct_lookup))
		return 0;
	void *data_end = (void *)(long)skb->data_end;
	/* The mask bounds the offset for the verifier (callers pass at most
	 * STACK_FLOW_MAX_OFF, which it keeps whole). */
	struct ethhdr *eth = (void *)(long)skb->data + (off & STACK_FLOW_MAX_OFF);
	if ((void *)(eth + 1) > data_end)
		return 0;
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts opts = {.netns_id = WEFT_CURRENT_NETNS};
	__u32 size;
	__be16 *ports;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x1FFF)))
			return 0;
		opts.l4proto = ip->protocol;
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		ports = (void *)(ip + 1);
		size = sizeof(t.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		opts.l4proto = ip6->nexthdr;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		ports = (void *)(ip6 + 1);
		size = sizeof(t.ipv6);
	} else {
		return 0;
	}
	if (opts.l4proto != WEFT_IPPROTO_TCP && opts.l4proto != WEFT_IPPROTO_UDP)
		return 0;
	if ((void *)(ports + 2) > data_end)
		return 0;
	if (size == sizeof(t.ipv4)) {
		t.ipv4.sport = ports[0];
		t.ipv4.dport = ports[1];
	} else {
		t.ipv6.sport = ports[0];
		t.ipv6.dport = ports[1];
	}
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, size, &opts, sizeof(opts));
	if (!ct)
		return 0;
	bpf_ct_release(ct);
	return 1;
}

#endif
