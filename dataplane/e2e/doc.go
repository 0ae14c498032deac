// Package e2e tests the whole data path in network namespaces: the demux
// and tunnel binaries, built from this tree, joined by
// bench/topology exactly as `make demo` joins them, with real TUN
// devices, WireGuard, iperf3, ping and, for interop, Debian's stock
// wireguard-go. The tests need root and skip with the reason without it.
package e2e
