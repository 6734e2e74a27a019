package object

// The include path names Debian's multiarch asm headers, which clang's bpf
// target does not find on its own; paths are not recorded in the output.
//go:generate go tool bpf2go -target bpfel -type tunnel_key -type tunnel_value -type stats -type config -type local_value -type endpoint_key -type endpoint_value -type pod_value -type pod_net -type guard -type drop_reason -type host_stats -type decap_stats -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Weft weft.c
