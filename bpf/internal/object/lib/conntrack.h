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

/* What the fast paths' per-flow memories (host routing's pairs,
 * hostroute.h; the underlay check's acceptances, underlay.h) key a TCP
 * packet by beside its addresses, and whether conntrack's answer for the
 * flow (stack_flow) may be taken from them. Conntrack gives a flow its
 * entry when the stack sees the flow's first packet, the SYN (a Service's
 * DNAT, a hostPort, the node's own connections), and a flow that has none
 * then gets none while it runs: a NAT rule added later applies to new
 * connections only. So a TCP packet without SYN or RST (steady) may take
 * the answer remembered for its flow, for the memory's 100 ms at most, and
 * a SYN or SYN-ACK, the first packet each way of a connection, or a reset
 * (a refused connection's answer), is always looked up: a connection that
 * reuses a remembered flow's ports (a client's port reused towards a
 * Service address that DNATs to the same backend) has its own answer
 * from its first packet on. (A bare ACK that answers a SYN, from a
 * TIME_WAIT socket holding the same ports, may go either way: the client
 * resets and sends its SYN again, through the stack or not.) Only TCP: UDP
 * (no first packet to tell) and everything else keep the lookup per
 * packet and are remembered per address pair (ports 0), as before. */
struct flow_ports {
	__be16 sport; /* 0: not a TCP packet stack_flow would look up */
	__be16 dport;
	__u32 steady; /* TCP without SYN or RST: a remembered answer stands */
};

/* Remembered answers of stack_flow (a memory's ct byte). */
#define FLOW_CT_UNKNOWN 0
#define FLOW_CT_NONE 1  /* conntrack had no entry: the fast path */
#define FLOW_CT_STACK 2 /* it had one: to the stack */

/* TCP header flags (byte 13). */
#define WEFT_TCP_SYN 0x02
#define WEFT_TCP_RST 0x04

/* flow_ports fills f (zero on entry) for a TCP packet with the headers
 * stack_flow parses (IPv4 without options or fragments, IPv6 without
 * extension headers), its Ethernet header at off as for stack_flow (0, or
 * the inner one of a VXLAN packet, decap.h), else leaves it zero. A global
 * function (common.h). Always returns 0. */
__noinline int flow_ports(struct __sk_buff *skb, __u32 off, struct flow_ports *f)
{
	if (!f)
		return 0;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = (void *)(long)skb->data + (off & STACK_FLOW_MAX_OFF);
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u8 *l4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x1FFF)) ||
		    ip->protocol != WEFT_IPPROTO_TCP)
			return 0;
		l4 = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != WEFT_IPPROTO_TCP)
			return 0;
		l4 = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(l4 + 14) > data_end)
		return 0;
	__builtin_memcpy(&f->sport, l4, 2);
	__builtin_memcpy(&f->dport, l4 + 2, 2);
	f->steady = !(l4[13] & (WEFT_TCP_SYN | WEFT_TCP_RST));
	return 0;
}

/* remembered_stack_flow is stack_flow (Ethernet header at off) for a
 * packet whose flow's memory holds *ct (in the map, written in place, or
 * in the entry about to be written): a steady TCP packet takes a
 * remembered answer, any other packet is looked up, and for TCP the
 * answer is remembered. */
static __always_inline int remembered_stack_flow(struct __sk_buff *skb, __u32 off, const struct flow_ports *f,
						 __u8 *ct)
{
	if (f->steady && *ct != FLOW_CT_UNKNOWN)
		return *ct == FLOW_CT_STACK;
	int s = stack_flow(skb, off);
	if (f->sport)
		*ct = s ? FLOW_CT_STACK : FLOW_CT_NONE;
	return s;
}

#endif
