package main

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

func TestParseFlow(t *testing.T) {
	q := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	f, err := parseFlow(q("src", "10.1.0.5", "dst", "10.2.0.9", "proto", "TCP", "sport", "40000", "dport", "443"))
	if err != nil || f.Proto != flowhash.ProtoTCP || f.SrcPort != 40000 || f.DstPort != 443 ||
		netip.AddrFrom16(f.Src).Unmap() != netip.MustParseAddr("10.1.0.5") {
		t.Fatalf("%+v %v", f, err)
	}
	if f, err := parseFlow(q("src", "fd00:a::5", "dst", "fd00:b::9", "proto", "icmp")); err != nil || f.Proto != flowhash.ProtoICMPv6 {
		t.Errorf("icmp between IPv6 hosts: %+v %v, want icmpv6", f, err)
	}
	if f, err := parseFlow(q("src", "10.1.0.5", "dst", "10.2.0.9", "proto", "47")); err != nil || f.Proto != 47 {
		t.Errorf("a protocol by number: %+v %v", f, err)
	}
	for _, c := range []struct {
		q    url.Values
		want string
	}{
		{q("src", "10.1.0", "dst", "10.2.0.9", "proto", "udp", "sport", "1", "dport", "2"), "SRC"},
		{q("src", "10.1.0.5", "dst", "fd00::9", "proto", "udp", "sport", "1", "dport", "2"), "one is IPv4, the other IPv6"},
		{q("src", "10.1.0.5", "dst", "10.2.0.9", "proto", "gre-ish"), "PROTO"},
		{q("src", "10.1.0.5", "dst", "10.2.0.9", "proto", "udp"), "give SPORT and DPORT"},
		{q("src", "10.1.0.5", "dst", "10.2.0.9", "proto", "udp", "sport", "70000", "dport", "2"), "want 0-65535"},
	} {
		if _, err := parseFlow(c.q); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error saying %q", c.q, err, c.want)
		}
	}
}
