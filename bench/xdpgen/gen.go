package xdpgen

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel gen gen.c -- -I/usr/include/x86_64-linux-gnu

// The stand-in gateway's GENEVE sink (sink.c).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel sink sink.c -- -I/usr/include/x86_64-linux-gnu
