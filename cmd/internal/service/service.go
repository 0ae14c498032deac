// Package service speaks to the service manager that runs a node: the
// sd_notify datagrams of a systemd Type=notify unit (READY=1 once the node
// carries traffic, RELOADING=1 around a SIGHUP, STOPPING=1, STATUS=
// lines for `systemctl status`) and the watchdog's keep-alives. Without
// $NOTIFY_SOCKET (a node started by hand) every call does nothing. It
// also keeps a long-running node's resident memory near what its heap
// holds (ReleaseMemory).
//
// The protocol is a few lines of text in one unix datagram (sd_notify(3));
// it is written here rather than taken from a library for those lines.
package service

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Notify sends state ("READY=1", "STATUS=3 of 3 lanes up", lines joined
// by newlines) to $NOTIFY_SOCKET. It reports whether a manager listens.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] == '@' { // an abstract socket
		path = "\x00" + path[1:]
	} else if path[0] != '/' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or an abstract name", path)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}

// Reloading is the state a node sends before it re-reads its config
// (systemd 253's Type=notify-reload wants the monotonic time with it).
func Reloading() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}

// WatchdogInterval is how often the manager wants a keep-alive
// ($WATCHDOG_USEC, for this process: $WATCHDOG_PID), or 0.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}

// Watchdog sends WATCHDOG=1 every half interval while alive() returns,
// until ctx ends. alive should take the locks the node's work takes (its
// status does), so that a node stuck on one is restarted, not kept alive
// by this goroutine alone.
func Watchdog(ctx context.Context, alive func()) {
	every := WatchdogInterval() / 2
	if every <= 0 {
		return
	}
	tick(ctx, every, func() {
		alive()
		Notify("WATCHDOG=1")
	})
}

// tick calls fn every period until ctx ends.
func tick(ctx context.Context, period time.Duration, fn func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Ready waits until up() says the node carries traffic or wait has
// passed, whichever is first, then sends READY=1 with up's status line.
// A node whose peers are not there yet is still ready (its lanes come up
// when they are); its STATUS says what it waits for.
func Ready(ctx context.Context, wait time.Duration, up func() (bool, string)) {
	deadline := time.Now().Add(wait)
	for {
		ok, status := up()
		if ok || !time.Now().Before(deadline) {
			Notify("READY=1\nSTATUS=" + oneLine(status))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Status sends a STATUS= line (`systemctl status` shows it).
func Status(s string) { Notify("STATUS=" + oneLine(s)) }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// ReleaseEvery is how often a node hands its heap's free pages back to
// the kernel (ReleaseMemory).
const ReleaseEvery = 30 * time.Second

// ReleaseMemory returns the heap's free pages to the kernel every
// period until ctx ends. Left to itself the runtime keeps every page it
// ever used, up to its heap goal, and a gateway's pages keep getting
// used: wireguard-go recycles 64 KiB message buffers through pools that
// each collection empties, and a new buffer on a used page is zeroed
// whole, though a packet touches one page of it. So resident memory
// crept towards the heap's peak long after warm-up (make soak, 10
// minutes: +17 %). Releasing keeps it near what the heap holds, for one
// extra collection per period (milliseconds on a node's heap).
func ReleaseMemory(ctx context.Context, period time.Duration) {
	tick(ctx, period, debug.FreeOSMemory)
}
