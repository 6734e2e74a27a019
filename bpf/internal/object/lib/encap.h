/* VXLAN encapsulation in the program (CONFIG_ENCAP): a packet for a remote
 * pod gets its outer Ethernet/IPv4/UDP/VXLAN headers here and leaves
 * through the underlay interface, instead of going through the overlay
 * device's transmit path (route, tunnel socket, UDP and IP output), which
 * kernel VXLAN and weft's device path both pay. The packet on the wire is
 * the one the kernel's VXLAN driver would send with weft's tunnel key, so
 * a peer receiving with the device accepts it. */
#ifndef WEFT_ENCAP_H
#define WEFT_ENCAP_H

#include <stddef.h>
#include <linux/udp.h>

#include "common.h"
#include "addr.h"
#include "maps.h"
#include "stats.h"
#include "tunnel.h"

/* What goes between the outer Ethernet header and the inner IP header. */
struct encap4_hdr {
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan_hdr vx;
	struct ethhdr inner;
} __attribute__((packed));

/* What encap_vxlan4 writes: from the outer Ethernet header's protocol on. */
struct encap4_out {
	__be16 proto;
	struct encap4_hdr h;
} __attribute__((packed));

/* The kernel's default local port range (net.ipv4.ip_local_port_range),
 * which the VXLAN driver's udp_flow_src_port takes its source ports from
 * when the device names none (weft's do not). */
#define ENCAP_SPORT_MIN 32768
#define ENCAP_SPORT_MAX 60999

#define INET_ECN_MASK_WEFT 3
#define INET_ECN_CE_WEFT 3
#define INET_ECN_ECT0_WEFT 2

/* encap_sport is the outer UDP source port of skb's flow, as the kernel's
 * udp_flow_src_port picks it: from the flow hash, so one flow keeps one
 * port and the underlay's ECMP and the receiver's RSS spread flows. */
static __always_inline __be16 encap_sport(struct __sk_buff *skb)
{
	__u32 hash = bpf_get_hash_recalc(skb);
	hash ^= hash << 16;
	return bpf_htons((__u16)((((__u64)hash * (ENCAP_SPORT_MAX - ENCAP_SPORT_MIN)) >> 32) + ENCAP_SPORT_MIN));
}

/* ip_csum is the IPv4 header checksum of a 20-byte header whose check
 * field is 0. */
static __always_inline __u16 ip_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/* encap_vxlan4 encapsulates the frame in skb (an IPv4 or IPv6 packet from
 * a pod, checked, TTL decremented) in VXLAN towards tv's IPv4 endpoint and
 * leaves it for the caller to send out of the underlay interface (cfg's
 * CONFIG_ENCAP fields; forward.h's tunnel_out). It returns 0 when it
 * encapsulated the packet, a verdict (> 0) when it must be dropped, or -1
 * when it did not touch the packet (a GSO packet the kernel cannot grow,
 * a BIG packet for an endpoint that cannot take it): the caller then
 * hands it to the overlay device.
 *
 * BIG TCP: a GSO packet whose outer IPv4 length would pass 65,535 is
 * encapsulated here only towards an endpoint whose programs take such
 * packets out of the tunnel themselves (FLAG_BIG_DECAP, decap.h), with the
 * outer IPv4 total length and UDP length 0: the kernel's convention for
 * IPv4 BIG TCP (iph_totlen: skb->len is the length), and segmentation
 * (inet_gso_segment, the UDP tunnel segmentation) writes both lengths into
 * each segment anyway. Towards any other endpoint it stays with the
 * device, which segments it in software first: the kernel's UDP receive
 * drops a datagram whose length field is 0. Only an inner IPv4 packet:
 * an IPv6 BIG TCP packet that something on the path segments in software
 * as a UDP tunnel packet (a bridge or NIC whose limit is 64 KiB) comes
 * out broken on Linux 6.18 (48 MiB took 14.5 s instead of 62 ms; the
 * inner hop-by-hop jumbo header is the likely cause), so it goes to the
 * device, which segments it before encapsulating.
 *
 * bpf_skb_adjust_room at the MAC layer with the ENCAP flags inserts the
 * room between the frame's Ethernet header (which becomes the outer one)
 * and its IP header, switches skb->protocol to IPv4, marks the skb
 * encapsulated with its inner headers and, for a GSO packet, adds
 * SKB_GSO_UDP_TUNNEL, so the underlay (or the software GSO in front of it)
 * segments the inner TCP stream and replicates the outer headers; FIXED_GSO
 * keeps the segment size, which fits already (the caller checked the
 * overlay device's MTU, the underlay's less the overhead). */
static __always_inline int encap_vxlan4(struct __sk_buff *skb, const struct config *cfg,
					const struct tunnel_value *tv)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return -1;
	__u8 ecn;
	__be16 proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return -1;
		ecn = ip->tos & INET_ECN_MASK_WEFT;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		ecn = (bpf_ntohs(*(__be16 *)ip6) >> 4) & INET_ECN_MASK_WEFT;
	}
	__u32 inner_len = skb->len;
	__u32 outer_len = inner_len - ETH_HLEN + sizeof(struct encap4_hdr);
	int big = outer_len > 0xFFFF;
	if (big && (!skb->gso_size || !(tv->flags & FLAG_BIG_DECAP) || proto != bpf_htons(ETH_P_IP)))
		return -1;
	struct ethhdr orig;
	__builtin_memcpy(&orig, eth, sizeof(orig));
	__be16 sport = encap_sport(skb);

	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		      BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	if (bpf_skb_adjust_room(skb, sizeof(struct encap4_hdr), BPF_ADJ_ROOM_MAC, flags) < 0)
		return -1;

	/* As the kernel's VXLAN driver with weft's tunnel key: TOS 0 but the
	 * inner ECN (INET_ECN_encapsulate: CE becomes ECT(0)), DF clear, a
	 * fresh ID, TTL TUNNEL_TTL, no UDP checksum. Built on the stack (the
	 * checksum is computed there) and written with the outer Ethernet
	 * header's protocol in one store. */
	struct encap4_out o = {};
	o.proto = bpf_htons(ETH_P_IP);
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.tos = ecn == INET_ECN_CE_WEFT ? INET_ECN_ECT0_WEFT : ecn;
	ip.tot_len = big ? 0 : bpf_htons(outer_len);
	ip.id = (__u16)bpf_get_prandom_u32();
	ip.ttl = TUNNEL_TTL;
	ip.protocol = IPPROTO_UDP;
	__builtin_memcpy(&ip.saddr, cfg->underlay_ipv4, 4);
	__builtin_memcpy(&ip.daddr, &tv->endpoint[12], 4);
	ip.check = ip_csum(&ip);
	__builtin_memcpy(&o.h.ip, &ip, sizeof(ip));

	o.h.udp.source = sport;
	o.h.udp.dest = cfg->port;
	o.h.udp.len = big ? 0 : bpf_htons(outer_len - sizeof(struct iphdr));

	o.h.vx.flags = bpf_htonl(VXLAN_FLAGS_VNI);
	o.h.vx.vni = bpf_htonl(tv->vni << 8);

	/* The inner frame: the pod's destination (the gateway MAC; the
	 * receiver marks it for itself, PACKET_HOST, as it does the device
	 * path's frames), this node's VTEP MAC as the source. */
	__builtin_memcpy(o.h.inner.h_dest, orig.h_dest, ETH_ALEN);
	__builtin_memcpy(o.h.inner.h_source, cfg->vtep_mac, ETH_ALEN);
	o.h.inner.h_proto = proto;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &o, sizeof(o), 0) < 0)
		return drop(DROP_NOT_IP); /* cannot happen: the room was just made */

	struct stats *s = stats();
	if (s) {
		s->tx_packets++;
		s->tx_bytes += inner_len;
		s->tx_encap++;
		s->tx_encap_big += big;
	}
	return 0;
}

#endif
