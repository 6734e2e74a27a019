/* Addresses from packet headers, in the form the maps use, and comparisons
 * of addresses and MACs. */
#ifndef WEFT_ADDR_H
#define WEFT_ADDR_H

#include "common.h"
#include "maps.h"

/* eth_hdr returns the frame's Ethernet header, NULL when the frame is
 * shorter. Helpers that may change packet data invalidate it. */
static __always_inline struct ethhdr *eth_hdr(struct __sk_buff *skb)
{
	struct ethhdr *eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return NULL;
	return eth;
}

enum addr_side {
	ADDR_DST = 0,
	ADDR_SRC = 1,
};

enum addr_result {
	ADDR_OK = 0,
	ADDR_NOT_IP = -1,        /* not IPv4/IPv6, or truncated */
	ADDR_IPV6_MULTICAST = 1, /* (destination only) an IPv6 multicast address */
	ADDR_IPV4_MAPPED = 2,    /* an IPv6 packet with an IPv4-mapped address */
};

/* mapped reports whether key's address (from an IPv6 header) is
 * IPv4-mapped (::ffff:0:0/96): the form the maps give IPv4, never a pod's
 * IPv6 address. It takes the key, not its bytes, so the compiler knows the
 * address is 4-byte aligned and reads it in words where key is a pointer
 * (pod_addrs), not byte by byte. */
static __always_inline int mapped_addr(const __u8 addr[16])
{
	__u32 w[3];
	__builtin_memcpy(w, addr, 12);
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline int mapped(const struct tunnel_key *key)
{
	return mapped_addr(key->addr);
}

/* load_addr fills key with the packet's source or destination address as a
 * full-length prefix (IPv4 as IPv4-mapped IPv6). An IPv6 packet whose
 * address is IPv4-mapped would pass for the IPv4 address: ADDR_IPV4_MAPPED. */
static __always_inline enum addr_result load_addr(struct __sk_buff *skb, struct tunnel_key *key,
						  enum addr_side side)
{
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = eth_hdr(skb);
	if (!eth)
		return ADDR_NOT_IP;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return ADDR_NOT_IP;
		__builtin_memset(key->addr, 0, 10);
		key->addr[10] = 0xff;
		key->addr[11] = 0xff;
		__u32 a = side == ADDR_SRC ? ip->saddr : ip->daddr;
		__builtin_memcpy(&key->addr[12], &a, 4);
		key->prefixlen = 128;
		return ADDR_OK;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return ADDR_NOT_IP;
		if (side == ADDR_SRC)
			__builtin_memcpy(key->addr, &ip6->saddr, 16);
		else
			__builtin_memcpy(key->addr, &ip6->daddr, 16);
		key->prefixlen = 128;
		if (mapped(key))
			return ADDR_IPV4_MAPPED;
		if (side == ADDR_DST && key->addr[0] == 0xff)
			return ADDR_IPV6_MULTICAST;
		return ADDR_OK;
	}
	return ADDR_NOT_IP;
}

/* addr_eq compares two 16-byte addresses. */
static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u32 x[4], y[4];
	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* mac_eq compares two MAC addresses. */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	__u32 a4, b4;
	__u16 a2, b2;
	__builtin_memcpy(&a4, a, 4);
	__builtin_memcpy(&b4, b, 4);
	__builtin_memcpy(&a2, a + 4, 2);
	__builtin_memcpy(&b2, b + 4, 2);
	return a4 == b4 && a2 == b2;
}

#endif
