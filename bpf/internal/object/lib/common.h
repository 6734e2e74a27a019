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
/* tunnel_value.flags: the endpoint's programs take BIG VXLAN packets (outer
 * IPv4 longer than 65,535, both length fields 0) out of the tunnel
 * themselves, for every destination (decap.h); encap.h sends such packets
 * in the program only to such an endpoint. */
#define FLAG_BIG_DECAP (1U << 1)

/* Global functions. Most helpers here are inlined (static
 * __always_inline): the verifier then walks their code once per path into
 * them, with that path's state. A few are global BPF subprograms instead
 * (__noinline, not static): the verifier checks each once per program, for
 * any arguments of its types, and the caller learns only that it returned
 * some int and may have written the memory it was handed. That keeps the
 * verifier's states from multiplying where a caller would keep several
 * values of several ranges live across them (the underlay check's
 * addresses, pod_addrs; the conntrack lookup behind every fast path,
 * stack_flow). The price: a BPF-to-BPF call per packet, and the
 * verifier's rules for them: arguments are the context, scalars or
 * pointers to a struct (or int), which may be NULL as far as it knows, so
 * the function checks them; never packet pointers; an int back. */

/* TTL (hop limit) of the outer header. */
#define TUNNEL_TTL 64

#endif
