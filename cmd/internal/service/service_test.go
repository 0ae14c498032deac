package service

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// manager listens as systemd does and returns what it receives.
func manager(t *testing.T) <-chan string {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	got := make(chan string, 16)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			if err != nil {
				return
			}
			got <- string(b[:n])
		}
	}()
	return got
}

func recv(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case s := <-got:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("the manager received nothing")
		return ""
	}
}

func TestNotifyWithoutManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Fatalf("no $NOTIFY_SOCKET: sent %v, err %v; want neither", sent, err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative/path")
	if _, err := Notify("READY=1"); err == nil {
		t.Fatal("a relative NOTIFY_SOCKET: want an error")
	}
}

func TestReadyWaitsForTheFirstLane(t *testing.T) {
	got := manager(t)
	var lanes atomic.Int32
	go func() { time.Sleep(100 * time.Millisecond); lanes.Store(2) }()
	start := time.Now()
	Ready(context.Background(), 10*time.Second, func() (bool, string) {
		n := lanes.Load()
		return n > 0, strconv.Itoa(int(n)) + " of 3 lanes up"
	})
	if took := time.Since(start); took < 100*time.Millisecond || took > 5*time.Second {
		t.Errorf("Ready returned after %s; want once the lane came up (100 ms)", took)
	}
	if s := recv(t, got); s != "READY=1\nSTATUS=2 of 3 lanes up" {
		t.Errorf("got %q", s)
	}
}

func TestReadyAfterTheWaitWithoutLanes(t *testing.T) {
	got := manager(t)
	Ready(context.Background(), 200*time.Millisecond, func() (bool, string) { return false, "0 of 3 lanes up:\nwaiting" })
	if s := recv(t, got); s != "READY=1\nSTATUS=0 of 3 lanes up: waiting" {
		t.Errorf("got %q", s)
	}
}

func TestWatchdog(t *testing.T) {
	got := manager(t)
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d := WatchdogInterval(); d != 20*time.Millisecond {
		t.Fatalf("interval %s", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var checks atomic.Int32
	go Watchdog(ctx, func() { checks.Add(1) })
	for i := 0; i < 3; i++ {
		if s := recv(t, got); s != "WATCHDOG=1" {
			t.Fatalf("got %q", s)
		}
	}
	if checks.Load() < 3 {
		t.Errorf("%d liveness checks for 3 keep-alives", checks.Load())
	}
	t.Setenv("WATCHDOG_PID", "1") // another process's watchdog
	if d := WatchdogInterval(); d != 0 {
		t.Errorf("another pid's watchdog: interval %s, want 0", d)
	}
}

func TestReloading(t *testing.T) {
	s := Reloading()
	usec, ok := strings.CutPrefix(s, "RELOADING=1\nMONOTONIC_USEC=")
	if n, err := strconv.ParseInt(usec, 10, 64); !ok || err != nil || n <= 0 {
		t.Errorf("Reloading() = %q", s)
	}
}

var garbage [][]byte // global, so that it is live until dropped

// TestReleaseMemory: freed heap goes back to the kernel within a period,
// and the loop ends with its context.
func TestReleaseMemory(t *testing.T) {
	released := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	garbage = make([][]byte, 64)
	for i := range garbage {
		garbage[i] = make([]byte, 1<<20)
		garbage[i][0] = 1
	}
	runtime.GC() // while it is live: nothing of it is free yet
	before := released()
	garbage = nil
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ReleaseMemory(ctx, 10*time.Millisecond); close(done) }()
	for t0 := time.Now(); released() < before+32<<20 && time.Since(t0) < 5*time.Second; {
		time.Sleep(10 * time.Millisecond)
	}
	if got := released(); got < before+32<<20 {
		t.Errorf("released %d MiB after freeing 64 MiB, %d before", got>>20, before>>20)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ReleaseMemory did not end with its context")
	}
}
