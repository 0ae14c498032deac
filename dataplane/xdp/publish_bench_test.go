//go:build linux

package xdp

import (
	"testing"

	"github.com/clusterpeer/clusterpeer/flowhash"
)

// BenchmarkPublish is what a lane change costs the fast path on top of
// the selector's own table swap, at the default table size: a new
// snapshot map filled and swapped in (the kernel waits for an RCU grace
// period on a map-in-map update, so that no program still reads the old
// one when it returns).
func BenchmarkPublish(b *testing.B) {
	cfg := Config{TableSize: flowhash.DefaultTableSize}
	p := loadTest(b, cfg)
	sel, err := flowhash.New(flowhash.Config{Key: cfg.Key, TableSize: flowhash.DefaultTableSize, Pins: flowhash.PinConfig{Capacity: 1 << 16}})
	if err != nil {
		b.Fatal(err)
	}
	if err := sel.SetLanes([]flowhash.Lane{{ID: 1}, {ID: 2}, {ID: 3}}); err != nil {
		b.Fatal(err)
	}
	snap, targets := sel.Snapshot(), testTargets(1, 2, 3)
	for b.Loop() {
		if err := p.Publish(snap, targets); err != nil {
			b.Fatal(err)
		}
	}
}
