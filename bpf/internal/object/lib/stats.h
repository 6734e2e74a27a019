/* What the programs count: per-CPU traffic statistics and every drop by
 * reason. */
#ifndef WEFT_STATS_H
#define WEFT_STATS_H

#include "common.h"

/* Per-CPU traffic statistics (one array slot). */
struct stats {
	__u64 tx_packets; /* sent into the tunnel (at the overlay device, or tx_encap) */
	__u64 tx_bytes;
	__u64 rx_packets; /* accepted out of the tunnel */
	__u64 rx_bytes;
	__u64 rx_direct; /* of rx: delivered straight into a local pod (redirect_peer) */
	__u64 tx_direct; /* of tx: sent from a pod's veth straight into the tunnel */
	__u64 tx_encap;  /* of tx: encapsulated by the program itself (encap.h), not the device */
	__u64 tx_encap_big; /* of tx_encap: BIG packets (outer IPv4 longer than 65,535) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_stats SEC(".maps");

/* Why a program dropped a packet: the key of weft_drops. Values are stable
 * (the Go side names them and metrics carry them); a new reason takes the
 * next free value below DROP_REASON_SLOTS, and the loader must name it too
 * (TestDropReasonNames fails otherwise). 0 is never used. */
enum drop_reason {
	DROP_NOT_IP = 1,          /* not IPv4/IPv6, or truncated */
	DROP_IPV6_MULTICAST = 2,  /* IPv6 multicast into the tunnel */
	DROP_NO_TUNNEL = 3,       /* no tunnel entry for the inner destination */
	DROP_TUNNEL_KEY = 4,      /* the kernel refused the tunnel key */
	DROP_NO_TUNNEL_INFO = 5,  /* received without tunnel metadata */
	DROP_UNKNOWN_SOURCE = 6,  /* no tunnel entry for the inner source */
	DROP_WRONG_ENDPOINT = 7,  /* outer source is not the node owning the inner source */
	DROP_WRONG_VNI = 8,       /* VNI is not the one of the inner source's entry */
	DROP_POD_UNKNOWN = 9,     /* from a pod port weft-cni has no entry for */
	DROP_POD_SOURCE = 10,     /* from a pod with an IP source that is not the pod's */
	DROP_POD_MAC = 11,        /* from a pod with an Ethernet source that is not the pod's */
	DROP_POD_ARP = 12,        /* ARP from a pod claiming an address or MAC not the pod's */
	DROP_POD_ND = 13,         /* neighbour advertisement for another address, RA or redirect from a pod */
	DROP_POD_PROTOCOL = 14,   /* from a pod: not IPv4, IPv6 or ARP, VLAN tagged, or truncated */
	DROP_IPV4_MAPPED = 15,    /* IPv6 packet with an IPv4-mapped pod address */
	DROP_PLAIN_TO_POD = 16,   /* plain packet from the underlay for a pod (overlay modes) */
	DROP_REVERSE_PATH = 17,   /* pod source from the underlay not via this node's route to it */
	DROP_REVERSE_PATH_UNRESOLVED = 18, /* the same, next hop's MAC not resolved yet */
};

/* Slots of weft_drops: room for reasons added later without changing the
 * map's layout (a changed layout resets the pinned counters). */
#define DROP_REASON_SLOTS 64

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_drops SEC(".maps");

static __always_inline struct stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weft_stats, &zero);
}

/* drop counts a drop for reason and returns the verdict that drops. It is
 * the slow path, kept out of line (which also puts enum drop_reason into
 * the object's BTF, where bpf2go finds it). */
static __noinline int drop(enum drop_reason reason)
{
	__u32 k = reason;
	__u64 *n = bpf_map_lookup_elem(&weft_drops, &k);
	if (n)
		(*n)++;
	return TC_ACT_SHOT;
}

static __always_inline void count_tx(struct __sk_buff *skb)
{
	struct stats *s = stats();
	if (s) {
		s->tx_packets++;
		s->tx_bytes += skb->len;
	}
}

static __always_inline void count_rx(struct __sk_buff *skb)
{
	struct stats *s = stats();
	if (s) {
		s->rx_packets++;
		s->rx_bytes += skb->len;
	}
}

static __always_inline void count_rx_direct(void)
{
	struct stats *s = stats();
	if (s)
		s->rx_direct++;
}

static __always_inline void count_tx_direct(void)
{
	struct stats *s = stats();
	if (s)
		s->tx_direct++;
}

#endif
