package flowhash

// Drop is why a packet could not be given a lane. Callers count drops by
// reason (a counter per reason, never an error per packet); String is the
// metric label value.
type Drop uint8

const (
	DropNone         Drop = iota
	DropTruncated         // a header or the transport ports lie beyond the packet's end
	DropBadVersion        // IP version is neither 4 nor 6
	DropBadHeader         // IPv4 IHL below 5
	DropBadLength         // IPv4 total length shorter than its header
	DropExtChain          // more than MaxIPv6ExtHeaders IPv6 extension headers
	DropBadICMPError      // ICMP error quoting a missing or malformed packet
	DropNoLane            // no lane is up
	DropSettling          // the flow's lane just failed: it waits out the lane's settle window (the demux holds it)
	NumDrops              // number of reasons, for counter arrays
)

var dropNames = [NumDrops]string{
	DropNone:         "none",
	DropTruncated:    "truncated",
	DropBadVersion:   "bad_ip_version",
	DropBadHeader:    "bad_header_length",
	DropBadLength:    "bad_total_length",
	DropExtChain:     "ipv6_ext_chain_too_long",
	DropBadICMPError: "bad_icmp_error",
	DropNoLane:       "no_lane",
	DropSettling:     "settling",
}

func (d Drop) String() string {
	if d < NumDrops {
		return dropNames[d]
	}
	return "unknown"
}
