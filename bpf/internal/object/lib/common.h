/* Includes and constants every weft eBPF program uses. */
#ifndef WEFT_COMMON_H
#define WEFT_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* tunnel_value.flags: the endpoint is an IPv6 underlay address. */
#define FLAG_IPV6_ENDPOINT (1U << 0)

/* TTL (hop limit) of the outer header. */
#define TUNNEL_TTL 64

#endif
