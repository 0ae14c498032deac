package xdp

// The program is built with clang and committed (demux_bpfel.go and .o),
// so building clusterpeer needs no clang; `make generate` rebuilds it and
// CI checks that doing so changes nothing. Little-endian only: the hash
// words are the packet's bytes read as little-endian words.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel demux demux.c -- -I/usr/include/x86_64-linux-gnu
