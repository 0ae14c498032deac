package probe

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// clock drives a session as the prober does: a probe every interval,
// answered after rtt when the lane works.
type clock struct {
	t   *testing.T
	s   *Session
	now time.Time
	p   Params
}

func newClock(t *testing.T, p Params) *clock {
	return &clock{t: t, s: NewSession(p, t0), now: t0, p: p}
}

// run advances d in steps of one interval; answer says whether probes are
// answered. It returns the times at which the state changed.
func (c *clock) run(d time.Duration, answer bool) []time.Time {
	var changes []time.Time
	step := c.p.Interval / 10
	for end := c.now.Add(d); c.now.Before(end); {
		seq := c.s.Sent(c.now)
		for range 10 {
			c.now = c.now.Add(step)
			if answer && seq != 0 {
				c.s.Reply(seq, c.now, c.now)
				seq = 0
			}
			if c.s.Evaluate(c.now) {
				changes = append(changes, c.now)
			}
		}
	}
	return changes
}

func TestSessionComesUpAfterKAnswers(t *testing.T) {
	c := newClock(t, fastParams)
	if c.s.Up() {
		t.Fatal("a new lane is up before any probe")
	}
	ch := c.run(100*time.Millisecond, true)
	if len(ch) != 1 || !c.s.Up() {
		t.Fatalf("changes %v, up %v", ch, c.s.Up())
	}
	// Up on the K-th reply: K-1 intervals plus one step.
	if got, want := ch[0].Sub(t0), 2*fastParams.Interval+fastParams.Interval/10; got != want {
		t.Errorf("up after %v, want %v", got, want)
	}
	if !strings.Contains(c.s.reason, "3 probes answered") {
		t.Errorf("reason %q", c.s.reason)
	}
}

func TestSessionDetectsDeathWithinDetectTime(t *testing.T) {
	p := fastParams
	c := newClock(t, p)
	c.run(100*time.Millisecond, true)
	lastReply := c.s.lastReply
	ch := c.run(200*time.Millisecond, false)
	if len(ch) != 1 || c.s.Up() {
		t.Fatalf("changes %v, up %v", ch, c.s.Up())
	}
	if d := ch[0].Sub(lastReply); d < p.Detect() || d > p.Detect()+p.Interval {
		t.Errorf("down %v after the last reply, want %v..%v", d, p.Detect(), p.Detect()+p.Interval)
	}
	st := c.s.Status(c.now)
	if st.Up || st.Transitions != 2 || !strings.Contains(st.Reason, "unanswered") {
		t.Errorf("status %+v", st)
	}
	if st.Loss < 0.5 {
		t.Errorf("loss %.2f after 200 ms of silence", st.Loss)
	}
}

func TestSessionOwnStallIsNotADeadLane(t *testing.T) {
	c := newClock(t, fastParams)
	c.run(100*time.Millisecond, true)
	// The prober was not scheduled for 200 ms: nothing sent, nothing heard.
	c.now = c.now.Add(200 * time.Millisecond)
	if c.s.Evaluate(c.now) {
		t.Fatal("lane declared down while no probe was sent")
	}
	if ch := c.run(50*time.Millisecond, true); len(ch) != 0 || !c.s.Up() {
		t.Fatalf("changes %v, up %v", ch, c.s.Up())
	}
}

func TestSessionLostProbeRestartsTheCount(t *testing.T) {
	c := newClock(t, fastParams)
	// Alternate answered and lost probes: never K in a row.
	for range 20 {
		c.run(fastParams.Interval, true)
		c.run(fastParams.Interval, false)
	}
	if c.s.Up() {
		t.Fatal("up with every other probe lost")
	}
}

func TestSessionFlapBackoff(t *testing.T) {
	p := fastParams
	p.HoldDown, p.HoldDownMax, p.FlapWindow = 100*time.Millisecond, 350*time.Millisecond, time.Second
	c := newClock(t, p)
	c.run(50*time.Millisecond, true)
	c.run(100*time.Millisecond, false) // the first failure: no hold-down yet
	var holds []time.Duration
	for range 4 {
		down := c.s.since
		// Answer until it is back up.
		for !c.s.Up() {
			c.run(p.Interval, true)
			if c.now.Sub(down) > 2*time.Second {
				t.Fatal("never came back")
			}
		}
		holds = append(holds, c.s.since.Sub(down))
		c.run(100*time.Millisecond, false)
	}
	want := []time.Duration{0, 100, 200, 350}
	for i, h := range holds {
		// Counted from going down; the silence lasts 100 ms from its start.
		lo := want[i] * time.Millisecond
		if h < lo || h > max(lo, 100*time.Millisecond)+p.Detect()+p.Interval {
			t.Errorf("flap %d: back after %v, want %v (+ probes)", i+1, h, lo)
		}
	}
	// A lane that then stays up longer than the flap window starts afresh.
	for !c.s.Up() {
		c.run(p.Interval, true)
	}
	c.run(p.FlapWindow+p.Interval, true)
	c.run(100*time.Millisecond, false)
	down := c.now
	for !c.s.Up() {
		c.run(p.Interval, true)
	}
	if d := c.s.since.Sub(down); d > p.Detect()+p.Interval {
		t.Errorf("after a stable period: held down %v, want no hold-down", d)
	}
}

func TestSessionRejectsUnknownAndDuplicateReplies(t *testing.T) {
	s := NewSession(fastParams, t0)
	seq := s.Sent(t0)
	if s.Reply(seq+1, t0, t0) || s.Reply(0, t0, t0) {
		t.Error("reply to a probe never sent accepted")
	}
	if !s.Reply(seq, t0.Add(time.Millisecond), t0) {
		t.Error("genuine reply refused")
	}
	if s.Reply(seq, t0, t0) {
		t.Error("duplicate reply accepted")
	}
	if st := s.Status(t0); st.RTT != time.Millisecond || st.Received != 1 {
		t.Errorf("status %+v", st)
	}
	old := s.Sent(t0)
	for range ringLen {
		s.Sent(t0)
	}
	if s.Reply(old, t0, t0) {
		t.Error("reply older than the ring accepted")
	}
}

// TestSessionDetectTimeFollowsTheRoundTrip: a path whose round trip
// spikes (a loaded gateway) is given longer before it is declared down;
// a quiet one keeps Multiplier intervals.
func TestSessionDetectTimeFollowsTheRoundTrip(t *testing.T) {
	p := fastParams
	s := NewSession(p, t0)
	now := t0
	for i := range 50 {
		seq := s.Sent(now)
		rtt := 500 * time.Microsecond
		if i == 49 {
			rtt = 20 * time.Millisecond // one spike, the last reply
		}
		s.Reply(seq, now.Add(rtt), now.Add(rtt))
		now = now.Add(p.Interval)
	}
	// 3 intervals + srtt + 4 rttvar: 30 + 3.4 + 4 x 4.9 ms.
	if d := s.DetectTime(); d < 52*time.Millisecond || d > 54*time.Millisecond {
		t.Errorf("after a 20 ms spike: detect %v, want ~53ms", d)
	}
	for range 2000 { // 20 s of quiet
		seq := s.Sent(now)
		s.Reply(seq, now.Add(500*time.Microsecond), now)
		now = now.Add(p.Interval)
	}
	if d := s.DetectTime(); d != p.Detect() {
		t.Errorf("after 20 s of quiet: detect %v, want %v", d, p.Detect())
	}
}

// fastParams are the defaults with the detection time of 4 intervals
// that the session's rules are tested at (the default is longer).
var fastParams = func() Params { p := DefaultParams; p.Multiplier = 4; return p }()

// TestSessionStaysDownWhileSignalsCome: a gateway that is stopping
// reports it on every probe while the far side still answers them; the
// lane must not come back on those answers, only once the reports stop.
func TestSessionStaysDownWhileSignalsCome(t *testing.T) {
	p := DefaultParams
	c := newClock(t, p)
	c.run(100*time.Millisecond, true)
	seq := c.s.Sent(c.now)
	if !c.s.Signal(c.now, seq, "administratively down", true) {
		t.Fatal("signal did not take the lane down")
	}
	// Every probe answered, only every sixth reported on (reports lost
	// on a busy host in between must not let the lane up either).
	for i := range 60 {
		seq := c.s.Sent(c.now)
		c.now = c.now.Add(time.Millisecond)
		if i%6 == 5 {
			c.s.Signal(c.now, seq, "administratively down", true)
		}
		c.now = c.now.Add(time.Millisecond)
		c.s.Reply(seq, c.now, c.now)
		c.now = c.now.Add(p.Interval - 2*time.Millisecond)
		if c.s.Evaluate(c.now) {
			t.Fatalf("probe %d: the lane came back while its gateway still reported it down", i)
		}
	}
	if ch := c.run(p.Detect()+100*time.Millisecond, true); len(ch) != 1 || !c.s.Up() {
		t.Fatalf("after the reports stopped: changes %v, up %v", ch, c.s.Up())
	}
}

// TestSessionSuspect: an unauthenticated report (an ICMP error quoting a
// data frame) polls the lane: a reply to the poll clears it, however
// often it comes; a reply to a probe sent before it does not; with no
// reply the lane goes down after the confirmation wait, by the signal,
// not after the silence; a down lane ignores it.
func TestSessionSuspect(t *testing.T) {
	c := newClock(t, fastParams)
	c.run(50*time.Millisecond, true)
	if !c.s.Up() {
		t.Fatal("not up")
	}
	wait := c.s.ConfirmWait()
	if wait < 20*time.Millisecond || wait > 100*time.Millisecond {
		t.Fatalf("confirm wait %v outside 20-100 ms", wait)
	}

	// Forged: the poll is answered, the lane stays up, and reports are
	// then ignored for distrustFor, however many come.
	if !c.s.Suspect(c.now, "ICMP port unreachable (forged)") {
		t.Fatal("no poll asked for")
	}
	if c.s.Suspect(c.now, "again") {
		t.Error("a second poll while one is outstanding")
	}
	poll := c.s.Sent(c.now)
	c.now = c.now.Add(time.Millisecond / 2)
	c.s.Reply(poll, c.now, c.now)
	c.now = c.now.Add(wait)
	if c.s.Evaluate(c.now) || !c.s.Up() {
		t.Fatalf("down although the poll was answered: %s", c.s.reason)
	}
	if c.s.Disproved() != 1 {
		t.Errorf("disproved %d, want 1", c.s.Disproved())
	}
	for range 100 {
		if c.s.Suspect(c.now, "forged again") {
			t.Fatal("a report acted on within distrustFor of a disproved one")
		}
	}
	c.run(distrustFor, true)

	// The gateway is gone: a probe in flight before the error is answered
	// (it was on its way back), the poll is not.
	before := c.s.Sent(c.now)
	c.now = c.now.Add(100 * time.Microsecond)
	if !c.s.Suspect(c.now, "ICMP port unreachable from 10.1.0.21: gateway gw-a1 gone") {
		t.Fatal("no poll")
	}
	c.s.Sent(c.now) // the poll
	start := c.now
	c.now = c.now.Add(200 * time.Microsecond)
	c.s.Reply(before, c.now, c.now)
	if d := c.s.Deadline(); d.Sub(start) > wait {
		t.Errorf("deadline %v after the poll, want within %v", d.Sub(start), wait)
	}
	c.now = start.Add(wait / 2)
	if c.s.Evaluate(c.now) {
		t.Fatal("down before the confirmation wait")
	}
	c.now = start.Add(wait)
	if !c.s.Evaluate(c.now) || c.s.Up() {
		t.Fatal("up after the poll went unanswered for the confirmation wait")
	}
	if !c.s.Confirmed() || c.s.ByTimeout() || !strings.Contains(c.s.reason, "gateway gw-a1 gone, and probe") {
		t.Errorf("confirmed %v by timeout %v reason %q", c.s.Confirmed(), c.s.ByTimeout(), c.s.reason)
	}
	if c.s.Suspect(c.now, "down already") {
		t.Error("a down lane asked for a poll")
	}
}

// TestSessionSettleLongIsForItsOwnDown: a planned stop's long settle
// (SettleLong) belongs to that down only. The lane's next failure, judged
// on silence, waits its round-trip timeout again (a forgotten mark made
// every later silence-judged failure of the lane wait the detection
// time as well: freeze-gw's blackout 400 ms, not 250).
func TestSessionSettleLongIsForItsOwnDown(t *testing.T) {
	c := newClock(t, fastParams)
	c.run(100*time.Millisecond, true)
	c.s.Fail(c.now, "administratively down", true)
	c.s.SettleLong()
	if got := c.s.Settle(); got != fastParams.Detect() {
		t.Fatalf("planned stop: settle %v, want the detection time %v", got, fastParams.Detect())
	}
	c.run(fastParams.Detect()+fastParams.FlapWindow+fastParams.HoldDownMax+100*time.Millisecond, true)
	if !c.s.Up() {
		t.Fatal("the lane did not come back")
	}
	if ch := c.run(2*c.s.DetectTime(), false); len(ch) == 0 || c.s.Up() || !c.s.ByTimeout() {
		t.Fatalf("silence: changes %v, up %v, by timeout %v", ch, c.s.Up(), c.s.ByTimeout())
	}
	if got := c.s.Settle(); got >= fastParams.Detect() {
		t.Errorf("down by silence after a planned stop: settle %v, want the round-trip timeout, not the detection time %v", got, fastParams.Detect())
	}
}
