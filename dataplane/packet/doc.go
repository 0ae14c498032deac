// Package packet is the one header layer: views of the headers
// clusterpeer reads and writes (IPv4, IPv6, UDP, ICMP, GENEVE) with named
// offsets and accessors, the builders that write them in place, the
// Internet checksum, and the ICMP "too big" errors the demux sends.
//
// What flows through it: raw packet bytes, never copied. A view (IPv4,
// UDP, Geneve, ...) is the packet's own slice with methods; the Put
// functions write a header into a caller's buffer. Nothing here
// allocates, so the data paths call it per packet. Every builder and
// parser in the project uses it instead of literal offsets (after
// gVisor's pkg/tcpip/header and wireguard-go's device/ip.go).
package packet
