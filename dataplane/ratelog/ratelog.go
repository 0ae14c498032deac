// Package ratelog throttles log lines that bad input or a failing device
// can repeat at packet rate: of the calls in each interval, the first is
// let through and told how many were held back since the last one, so a
// flood costs one line per interval and no count is lost.
package ratelog

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// Limiter lets one call per Every through. The zero value with Every set
// is ready; it is safe for concurrent use and does not allocate.
type Limiter struct {
	Every      time.Duration
	last       atomic.Int64 // unix ns of the last call let through
	suppressed atomic.Uint64
}

// Allow reports whether to log now and, if so, how many calls were held
// back since the last one that was let through.
func (l *Limiter) Allow(now time.Time) (bool, uint64) {
	t := now.UnixNano()
	last := l.last.Load()
	if last != 0 && t-last < int64(l.Every) || !l.last.CompareAndSwap(last, t) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}

// Warn logs msg at warning level if the limiter allows it, with the count
// held back as "suppressed".
func (l *Limiter) Warn(log *slog.Logger, msg string, args ...any) {
	ok, n := l.Allow(time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
