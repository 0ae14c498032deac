package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAllow: one call per interval gets through and carries the count
// of those held back; concurrent callers let exactly one through.
func TestAllow(t *testing.T) {
	l := Limiter{Every: time.Second}
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow(t0); !ok || n != 0 {
		t.Fatalf("first call: %v %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * 100 * time.Millisecond)); ok {
			t.Fatalf("call %d within the interval was let through", i)
		}
	}
	if ok, n := l.Allow(t0.Add(time.Second)); !ok || n != 5 {
		t.Fatalf("after the interval: %v, suppressed %d, want true 5", ok, n)
	}

	// Concurrent callers: one gets through; every other call is counted,
	// either in what that one was told (those held back before it took
	// the count) or in what the next one will be.
	var c Limiter
	c.Every = time.Hour
	var wg sync.WaitGroup
	var mu sync.Mutex
	through, told := 0, uint64(0)
	now := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if ok, n := c.Allow(now); ok {
					mu.Lock()
					through, told = through+1, told+n
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if through != 1 {
		t.Errorf("%d of 800 concurrent calls let through, want 1", through)
	}
	if got := told + c.suppressed.Load(); got != 799 {
		t.Errorf("held back %d (told %d, pending %d), want 799", got, told, c.suppressed.Load())
	}
}

func TestWarn(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := Limiter{Every: time.Hour}
	for range 3 {
		l.Warn(log, "bad frame", "from", "x")
	}
	if got := strings.Count(buf.String(), "bad frame"); got != 1 {
		t.Errorf("%d lines, want 1:\n%s", got, buf.String())
	}
}

func TestAllowAllocs(t *testing.T) {
	l := Limiter{Every: time.Millisecond}
	now := time.Now()
	if a := testing.AllocsPerRun(1000, func() { l.Allow(now) }); a != 0 {
		t.Errorf("%v allocs per call", a)
	}
}
