package lanewatch

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// udpFrame is an Ethernet frame from a gateway's MAC carrying IPv4 UDP
// 10.1.0.10:sport -> 10.2.0.10:6000.
func udpFrame(from [6]byte, sport uint16) []byte {
	f := make([]byte, 14+20+8+4)
	copy(f[6:12], from[:])
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:4], 32)
	copy(ip[12:16], []byte{10, 1, 0, 10})
	copy(ip[16:20], []byte{10, 2, 0, 10})
	binary.BigEndian.PutUint16(f[34:36], sport)
	binary.BigEndian.PutUint16(f[36:38], 6000)
	binary.BigEndian.PutUint16(f[38:40], 12)
	return f
}

// TestAttribution: packets count toward the lane whose gateway MAC sent
// them, a flow seen from two gateways is split, with when each lane first
// and last carried it; other MACs are counted apart.
func TestAttribution(t *testing.T) {
	gw1, gw2, stranger := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 2}, [6]byte{2, 0, 0, 0, 0, 9}
	w := &Watcher{lanes: map[[6]byte]int{gw1: 1, gw2: 2}, flows: map[flowhash.Tuple]*flow{}}
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w.add(udpFrame(gw2, 5000), at(0))
	w.add(udpFrame(gw2, 5000), at(10))
	w.add(udpFrame(gw1, 5000), at(50)) // moved to lane 1
	w.add(udpFrame(gw2, 5000), at(52)) // a straggler on lane 2
	w.add(udpFrame(gw1, 5001), at(60))
	w.add(udpFrame(stranger, 5001), at(61))
	w.add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x06}, at(62)) // ARP: ignored

	r := w.Report()
	if len(r.Flows) != 2 || r.SplitFlows != 1 || r.NotLane != 1 {
		t.Fatalf("report: %d flows, %d split, %d not from a lane; want 2, 1, 1", len(r.Flows), r.SplitFlows, r.NotLane)
	}
	f := r.Flows[0]
	if f.SrcPort != 5000 || f.First != 2 {
		t.Fatalf("first flow: port %d first lane %d, want 5000 and 2", f.SrcPort, f.First)
	}
	l1, l2 := f.Lanes[1], f.Lanes[2]
	if l2.Packets != 3 || !l2.First.Equal(at(0)) || !l2.Last.Equal(at(52)) {
		t.Errorf("lane 2: %+v, want 3 packets from 0 to 52 ms", *l2)
	}
	if l1.Packets != 1 || !l1.First.Equal(at(50)) || !l1.Last.Equal(at(50)) {
		t.Errorf("lane 1: %+v, want 1 packet at 50 ms", *l1)
	}
	if l1.Bytes != 32 {
		t.Errorf("lane 1: %d bytes, want the IP packet's 32", l1.Bytes)
	}
	if r.Lanes[1].Flows != 2 || r.Lanes[1].Packets != 2 || r.Lanes[2].Flows != 1 || r.Lanes[2].Packets != 3 {
		t.Errorf("lanes: 1 %+v, 2 %+v", *r.Lanes[1], *r.Lanes[2])
	}
}
