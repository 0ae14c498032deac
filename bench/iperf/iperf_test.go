package iperf

import (
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// The testdata reports are real iperf3 3.12 outputs (Debian bookworm),
// captured between two namespaces.

func TestParseTCP(t *testing.T) {
	r, err := Parse(mustRead(t, "testdata/tcp-p2.json"))
	if err != nil {
		t.Fatal(err)
	}
	if int(r.Bps) != 25102729853 || int(r.SentBps) != 25158962845 || r.Retransmits != 25153 {
		t.Errorf("%+v", r)
	}
	if r.Seconds < 1 || r.ClientCPUPct <= 0 || r.LostPercent != 0 {
		t.Errorf("%+v", r)
	}
}

func TestParseUDP(t *testing.T) {
	r, err := Parse(mustRead(t, "testdata/udp-p2.json"))
	if err != nil {
		t.Fatal(err)
	}
	// 2 streams at 50 Mbit/s, nothing lost.
	if r.Bps < 199e6 || r.Bps > 200e6 || r.LostPercent != 0 || r.JitterMs <= 0 {
		t.Errorf("%+v", r)
	}
}

func TestUDPLossLowersDelivered(t *testing.T) {
	data := strings.Replace(string(mustRead(t, "testdata/udp-p2.json")), `"lost_packets":	0,
			"packets":	20818,
			"lost_percent":	0,`, `"lost_packets":	5204,
			"packets":	20818,
			"lost_percent":	25,`, 1)
	r, err := Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if r.LostPercent != 25 || r.Bps > 0.76*r.SentBps || r.Bps < 0.74*r.SentBps {
		t.Errorf("25%% lost: %+v, want three quarters of the offered rate delivered", r)
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := Parse(mustRead(t, "testdata/refused.json")); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused: %v", err)
	}
	for _, bad := range []string{"", "{", `{"end": {}}`, `{"end": {"sum_sent": {}, "sum_received": {}}}`, `[1,2]`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, n := range []string{"tcp-p2", "udp-p2", "refused"} {
		data, _ := os.ReadFile("testdata/" + n + ".json")
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err == nil && !(r.Seconds > 0) {
			t.Errorf("accepted a report of %v seconds", r.Seconds)
		}
	})
}

func TestArgs(t *testing.T) {
	a := Test{Server: "10.2.0.10", Streams: 4, Duration: 5 * time.Second}.Args()
	if got := strings.Join(a, " "); got != "-c 10.2.0.10 -J -t 5 -P 4 --connect-timeout 3000" {
		t.Errorf("tcp: %s", got)
	}
	a = Test{Server: "10.2.0.10", UDP: true, Streams: 4, Duration: 2 * time.Second, Rate: 1e9}.Args()
	if i := slices.Index(a, "-b"); i < 0 || a[i+1] != "250000000" || !slices.Contains(a, "-u") {
		t.Errorf("udp: %v, want 250 Mbit/s per stream", a)
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseBidir: with --bidir what both receivers got is summed, and
// the server's part is kept apart (real iperf3 3.12 reports, loopback,
// 2 streams each way).
func TestParseBidir(t *testing.T) {
	r, err := Parse(mustRead(t, "testdata/tcp-bidir-p2.json"))
	if err != nil {
		t.Fatal(err)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 2 }
	if !near(r.ReverseBps, 3741555931.93) || !near(r.Bps, 15083230669.91+3741555931.93) || !near(r.SentBps, 15134134145.85+3836468414.87) {
		t.Errorf("tcp: %+v", r)
	}
	r, err = Parse(mustRead(t, "testdata/udp-bidir-p2.json"))
	if err != nil {
		t.Fatal(err)
	}
	// 2 streams at 50 Mbit/s each way, nothing lost.
	if r.ReverseBps < 99e6 || r.ReverseBps > 100e6 || r.Bps < 199e6 || r.Bps > 200e6 || r.LostPercent != 0 {
		t.Errorf("udp: %+v", r)
	}
	args := strings.Join(Test{Server: "10.2.0.10", UDP: true, Streams: 4, Rate: 800e6, Bidir: true, Duration: time.Second}.Args(), " ")
	if !strings.Contains(args, "--bidir") || !strings.Contains(args, "-b 100000000 ") {
		t.Errorf("args %q: want --bidir and 100 Mbit/s a stream a way", args)
	}
}
