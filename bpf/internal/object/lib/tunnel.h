/* The tunnel key: set on transmit from a tunnel entry, read and checked
 * against the entry on receive. */
#ifndef WEFT_TUNNEL_H
#define WEFT_TUNNEL_H

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"

/* The VXLAN header (RFC 7348): flags (I, the VNI is valid), then the VNI
 * in the upper 24 bits of the second word. The in-program transmit
 * (encap.h) writes it, the in-program receive (decap.h) reads it. */
struct vxlan_hdr {
	__be32 flags;
	__be32 vni;
};

#define VXLAN_FLAGS_VNI 0x08000000 /* the I flag, alone */

/* set_tunnel sets the tunnel key of skb towards tv's endpoint with tv's
 * VNI: outer TTL TUNNEL_TTL and, on IPv4, no outer UDP checksum, as the
 * kernel's VXLAN driver does by default (the inner packet carries its own
 * checksums). It returns the helper's result (< 0: not set). */
static __always_inline long set_tunnel(struct __sk_buff *skb, const struct tunnel_value *tv)
{
	struct bpf_tunnel_key tk = {};
	__u64 flags;

	tk.tunnel_id = tv->vni;
	tk.tunnel_ttl = TUNNEL_TTL;
	if (tv->flags & FLAG_IPV6_ENDPOINT) {
		__builtin_memcpy(tk.remote_ipv6, tv->endpoint, 16);
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		__u32 a;
		__builtin_memcpy(&a, &tv->endpoint[12], 4);
		tk.remote_ipv4 = bpf_ntohl(a);
		flags = BPF_F_ZERO_CSUM_TX;
	}
	return bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), flags);
}

/* tunnel_key_set reports whether skb already carries a tunnel key: the
 * transmit fast path sets it before redirecting to the overlay device, so
 * the device's egress program does not look the destination up again.
 * Packets routed by the stack carry none (routing drops the metadata). */
static __always_inline int tunnel_key_set(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tk;
	return bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) == 0 ||
	       bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), BPF_F_TUNINFO_IPV6) == 0;
}

/* outer is what a received packet's tunnel key says about its sender. */
struct outer {
	__u8 src[16]; /* outer source, IPv4-mapped for IPv4 */
	__u32 vni;
	int v6; /* the outer header was IPv6 */
};

/* read_outer fills o from skb's tunnel key; < 0 when there is none. */
static __always_inline int read_outer(struct __sk_buff *skb, struct outer *o)
{
	struct bpf_tunnel_key tk = {};

	if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) == 0) {
		__u32 a = bpf_htonl(tk.remote_ipv4);
		__builtin_memset(o->src, 0, 10);
		o->src[10] = 0xff;
		o->src[11] = 0xff;
		__builtin_memcpy(&o->src[12], &a, 4);
		o->v6 = 0;
	} else if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), BPF_F_TUNINFO_IPV6) == 0) {
		__builtin_memcpy(o->src, tk.remote_ipv6, 16);
		o->v6 = 1;
	} else {
		return -1;
	}
	o->vni = tk.tunnel_id;
	return 0;
}

/* check_outer returns 0 when the packet came out of the tunnel from tv's
 * endpoint (same family and address) with tv's VNI, else the drop reason. */
static __always_inline enum drop_reason check_outer(const struct outer *o, const struct tunnel_value *tv)
{
	int v6 = (tv->flags & FLAG_IPV6_ENDPOINT) != 0;
	if (v6 != o->v6 || !addr_eq(tv->endpoint, o->src))
		return DROP_WRONG_ENDPOINT;
	if (o->vni != tv->vni)
		return DROP_WRONG_VNI;
	return 0;
}

#endif
