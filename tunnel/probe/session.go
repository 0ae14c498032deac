package probe

import (
	"fmt"
	"time"
)

// Params are a lane session's timers, as BFD's (RFC 5880 6.8.4): a probe
// every Interval; down after Multiplier probes in a row go unanswered for
// Multiplier intervals; up again after UpAfter answered in a row. A lane
// that fails within FlapWindow of coming up is flapping: it is held down
// for HoldDown, doubling on every further flap up to HoldDownMax.
type Params struct {
	Interval    time.Duration
	Multiplier  int
	UpAfter     int
	HoldDown    time.Duration
	HoldDownMax time.Duration
	FlapWindow  time.Duration
}

// Defaults: silence is the fallback for the faults nothing reports (a
// frozen host, a blackhole, one-way loss); the common ones (a gateway
// process or host gone, its link down, a planned stop) are signalled and
// act in milliseconds. So the silence may be long enough that no stall of
// a busy gateway trips it: this project's 2-core test machine stalls busy
// processes for 40-150 ms, and 20 intervals (200 ms) took no lane down
// there under the failover scenarios' load (docs/health.md).
var DefaultParams = Params{
	Interval:    10 * time.Millisecond,
	Multiplier:  20,
	UpAfter:     3,
	HoldDown:    time.Second,
	HoldDownMax: 30 * time.Second,
	FlapWindow:  10 * time.Second,
}

// Detect is how long a lane may go without an answer.
func (p Params) Detect() time.Duration { return time.Duration(p.Multiplier) * p.Interval }

const ringLen = 64 // probes remembered: replies later than this are not matched

type probeRecord struct {
	seq      uint64
	sent     time.Time
	answered bool
}

// Session is one lane's probe history and up/down state. It is not safe
// for concurrent use; the Prober serialises it.
type Session struct {
	p    Params
	ring [ringLen]probeRecord
	seq  uint64 // last sent

	up         bool
	run        int    // replies to consecutive probes
	lastSeq    uint64 // highest answered
	lastReply  time.Time
	sinceReply int // probes sent since the last reply
	holdDown   time.Duration
	heldUntil  time.Time
	since      time.Time // last transition (or start)
	upSince    time.Time
	failed     bool // has gone down before
	changes    uint64
	reason     string

	byTimeout bool // the last down was judged on silence, not signalled
	delivers  bool // the lane that went down may still deliver what is inside it
	// settleLong: ... for as long as the detection time, unless a reply
	// crosses it first (a link being taken down, a planned stop)
	settleLong bool
	// lastSignal: the last reported fault. A gateway that reports one
	// answers every probe so, while replies may still cross the lane (a
	// planned stop); reports lost on a busy host must not let it up: the
	// lane stays down until none came for the detection time.
	lastSignal time.Time
	// suspectAt: a report that anyone able to forge the gateway's address
	// could have written (an ICMP error quoting a data frame: its inner
	// packet may be the forger's own) said the lane is gone. A reply to a
	// probe sent since (after suspectSeq) clears it; none within the
	// confirmation wait takes the lane down.
	suspectAt     time.Time
	suspectSeq    uint64
	suspectReason string
	confirmed     bool      // the last down confirmed a suspicion
	trustAfter    time.Time // suspicions are ignored before this (one was disproved)
	disproved     uint64

	sent, received    uint64
	rtt, srtt, rttvar time.Duration
}

// NewSession starts a lane down: it must earn its way in.
func NewSession(p Params, now time.Time) *Session {
	return &Session{p: p, since: now, reason: "starting: no probe answered yet"}
}

// Up reports the lane's state.
func (s *Session) Up() bool { return s.up }

// Sent records a probe sent now and returns its sequence number.
func (s *Session) Sent(now time.Time) uint64 {
	s.seq++
	s.ring[s.seq%ringLen] = probeRecord{seq: s.seq, sent: now}
	s.sent++
	s.sinceReply++
	return s.seq
}

// Reply records the answer to probe seq, which arrived at rx (the
// kernel's receive time on the monotonic clock, as the send times are;
// now is when it was processed). It returns false for a sequence number
// not sent, too old, or already answered.
func (s *Session) Reply(seq uint64, rx, now time.Time) bool {
	r := &s.ring[seq%ringLen]
	if seq == 0 || r.seq != seq || r.answered {
		return false
	}
	r.answered = true
	s.received++
	s.rtt = max(rx.Sub(r.sent), 0)
	if s.srtt == 0 {
		s.srtt, s.rttvar = s.rtt, s.rtt/2
	} else { // RFC 6298 2.3
		s.rttvar += (abs(s.srtt-s.rtt) - s.rttvar) / 4
		s.srtt += (s.rtt - s.srtt) / 8
	}
	if seq == s.lastSeq+1 {
		s.run++
	} else if seq > s.lastSeq {
		s.run = 1
	}
	if seq > s.lastSeq {
		s.lastSeq = seq
		s.lastReply = now
		s.sinceReply = int(s.seq - seq)
	}
	return true
}

// Recent reports whether probe seq was sent in this lane's current life:
// it is remembered, and, on an up lane, sent since the lane came up. A
// signal (an ICMP error quoting the probe, a gateway's notice answering
// it) counts only for such a probe, so an old one replayed cannot take a
// lane down that has come back since.
func (s *Session) Recent(seq uint64) bool {
	r := &s.ring[seq%ringLen]
	return seq != 0 && r.seq == seq && (!s.up || !r.sent.Before(s.upSince))
}

// Signal records a reported fault (checked by the caller against probe
// seq, see Recent): an up lane goes down at once; a down one starts its
// count of answered probes again. delivers says whether the lane may
// still deliver what is inside it (a planned stop), which its flows then
// wait for (Settle). It reports whether the state changed.
func (s *Session) Signal(now time.Time, seq uint64, reason string, delivers bool) bool {
	if !s.Recent(seq) {
		return false
	}
	return s.Fail(now, reason, delivers)
}

// Fail is Signal for a fault its caller checked otherwise. On a lane
// already down the report becomes its reason: why it stays down (a
// lane that went down by silence then learns, from its gateway, why).
func (s *Session) Fail(now time.Time, reason string, delivers bool) bool {
	s.run, s.lastSignal = 0, now
	if !s.up {
		s.reason = reason
		return false
	}
	s.goDown(now, reason)
	s.byTimeout, s.delivers = false, delivers
	return true
}

// Suspect records an unauthenticated report that the lane is gone. It
// reports whether to poll the lane now (a probe whose reply, or its
// absence, decides): false if the lane is down (its probes decide
// anyway) or already suspect.
func (s *Session) Suspect(now time.Time, reason string) bool {
	if !s.up || !s.suspectAt.IsZero() || now.Before(s.trustAfter) {
		return false
	}
	s.suspectAt, s.suspectSeq, s.suspectReason = now, s.seq, reason
	return true
}

// ConfirmWait is how long a suspect lane's oldest unanswered probe may
// wait before the suspicion stands: two retransmission timeouts (srtt +
// 4 rttvar), kept within 20-100 ms. This machine stalls a busy process
// for 10 ms one time in a thousand and for 40-150 ms under load; a lane
// whose far end stalls longer than the wait just when a forged error
// arrives goes down, and distrustFor makes that a rare coincidence
// rather than something a forger can wait for.
func (s *Session) ConfirmWait() time.Duration {
	return min(max(2*(s.srtt+4*s.rttvar), 20*time.Millisecond), 100*time.Millisecond)
}

// distrustFor: after a suspicion was disproved, reports of its kind are
// not acted on for this long (the lane's probes still judge it).
const distrustFor = time.Second

// Disproved counts the suspicions a reply disproved.
func (s *Session) Disproved() uint64 { return s.disproved }

// Confirmed reports whether the lane's last down confirmed a suspicion.
func (s *Session) Confirmed() bool { return s.confirmed }

// judgeSuspicion clears a suspicion that a reply disproved (one to a
// probe sent since), or takes the lane down once its oldest unanswered
// probe (the poll, or one sent before it) has waited ConfirmWait.
func (s *Session) judgeSuspicion(now time.Time) bool {
	switch {
	case s.suspectAt.IsZero():
		return false
	case s.lastSeq > s.suspectSeq:
		// Answered since: alive, and the report was forged (or stale).
		// Reports of its kind are not acted on for a while, so that a
		// forger polling the lane ceaselessly cannot wait for a stall.
		s.suspectAt, s.trustAfter = time.Time{}, now.Add(distrustFor)
		s.disproved++
		return false
	}
	at, ok := s.confirmAt()
	if !ok || now.Before(at) {
		return false
	}
	reason := fmt.Sprintf("%s, and probe %d unanswered for %s", s.suspectReason, s.lastSeq+1, now.Sub(at.Add(-s.ConfirmWait())).Round(100*time.Microsecond))
	s.goDown(now, reason)
	s.byTimeout, s.delivers, s.confirmed = false, false, true
	return true
}

// confirmAt is when a suspicion stands if no reply comes: ConfirmWait
// after the oldest probe not answered was sent (long ago if it is no
// longer remembered). ok is false with no probe outstanding.
func (s *Session) confirmAt() (at time.Time, ok bool) {
	if s.seq <= s.lastSeq {
		return time.Time{}, false
	}
	sent := s.lastReply
	if r := &s.ring[(s.lastSeq+1)%ringLen]; r.seq == s.lastSeq+1 {
		sent = r.sent
	}
	return sent.Add(s.ConfirmWait()), true
}

// SettleLong has the flows of the lane that just went down wait until a
// reply crosses it (the prober's OnSettled), at most the detection time,
// not its round-trip timeout: for a path being taken down, whose queued
// packets were seen to come out 190 ms after the report, and a planned
// stop, whose gateway forwards until the lane is quiet and whose host may
// stall longer than a round-trip timeout (a CI graceful-stop run released
// its flows after 1.96 ms and one packet still inside the lane came out
// 0.8 ms after their first on the new lane).
func (s *Session) SettleLong() { s.settleLong = true }

// ByTimeout reports whether the lane's last down was judged on silence
// (false: a signal said so).
func (s *Session) ByTimeout() bool { return s.byTimeout }

// Settle is how long the flows of a lane that just failed wait before
// their first packet on another lane (or until a reply crosses it). One
// that SettleLong marked waits the detection time. Another lane that may
// still deliver (one judged on silence) gets its round-trip timeout,
// srtt + 4 rttvar, which bounds how late a packet already inside it comes
// out (the probes cross the same gateways' queues as the data, so a
// loaded lane's round trip includes its queueing), kept within 1-50 ms.
// A lane that a signal says cannot deliver (its gateway gone, its path
// down) holds nothing that could still arrive: 1 ms.
func (s *Session) Settle() time.Duration {
	if !s.delivers {
		return time.Millisecond
	}
	if s.settleLong {
		return s.p.Detect()
	}
	return min(max(s.srtt+4*s.rttvar, time.Millisecond), 50*time.Millisecond)
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// DetectTime is how long the lane may stay silent before it is declared
// down: Multiplier intervals, or longer while the path's round trip is
// long or jittery (a loaded gateway queues): the reply to the last of the
// Multiplier probes is then allowed TCP's retransmission timeout (srtt +
// 4 rttvar, RFC 6298). (The recent peak round trip used to be allowed
// too; with 20 intervals it only added 50-130 ms to every silence-judged
// failure under load and prevented no false down: docs/health.md.)
func (s *Session) DetectTime() time.Duration {
	return max(s.p.Detect(), time.Duration(s.p.Multiplier-1)*s.p.Interval+s.srtt+4*s.rttvar)
}

// Deadline is when Evaluate should next run to take an up lane down
// without delay (zero when down: probes' replies decide then).
func (s *Session) Deadline() time.Time {
	if !s.up {
		return time.Time{}
	}
	d := s.lastReply.Add(s.DetectTime())
	if at, ok := s.confirmAt(); ok && !s.suspectAt.IsZero() && at.Before(d) {
		d = at
	}
	return d
}

// Evaluate applies the rules at now and reports whether the state changed;
// Reason then says why.
func (s *Session) Evaluate(now time.Time) bool {
	if s.up && s.judgeSuspicion(now) {
		return true
	}
	if s.up {
		// The probe count guards against our own stalls: a prober that was
		// not scheduled sent nothing, and silence it caused proves nothing.
		if s.sinceReply >= s.p.Multiplier && now.Sub(s.lastReply) >= s.DetectTime() {
			s.goDown(now, fmt.Sprintf("%d probes unanswered, none for %s", s.sinceReply, now.Sub(s.lastReply).Round(time.Millisecond)))
			s.byTimeout, s.delivers = true, true
			return true
		}
		return false
	}
	if s.seq > s.lastSeq && now.Sub(s.ring[(s.lastSeq+1)%ringLen].sent) >= s.p.Detect() {
		s.run = 0 // a probe after the last answered one is lost
	}
	quiet := now.Sub(s.lastSignal) >= s.p.Detect()
	if s.run >= s.p.UpAfter && quiet && !now.Before(s.heldUntil) && now.Sub(s.lastReply) < s.p.Detect() {
		s.up, s.since, s.upSince = true, now, now
		s.changes++
		s.reason = fmt.Sprintf("%d probes answered in a row", s.run)
		return true
	}
	return false
}

func (s *Session) goDown(now time.Time, reason string) {
	// Flapping: back from a failure and failing again soon after. (The
	// first life of a lane is not a flap, however short.)
	if !s.failed || now.Sub(s.upSince) >= s.p.FlapWindow {
		s.holdDown = 0
	} else if s.holdDown == 0 {
		s.holdDown = s.p.HoldDown
	} else {
		s.holdDown = min(2*s.holdDown, s.p.HoldDownMax)
	}
	if s.holdDown > 0 {
		s.heldUntil = now.Add(s.holdDown)
		reason += fmt.Sprintf("; flapping (up for %s), held down for %s", now.Sub(s.upSince).Round(time.Millisecond), s.holdDown)
	}
	s.up, s.since, s.run, s.failed = false, now, 0, true
	s.suspectAt, s.confirmed = time.Time{}, false
	s.settleLong = false // SettleLong marks this down, after goDown, if at all
	s.changes++
	s.reason = reason
}

// SessionStatus is a session as status and metrics show it.
type SessionStatus struct {
	Up          bool          `json:"up"`
	Since       time.Time     `json:"since"`
	Transitions uint64        `json:"transitions"`
	Reason      string        `json:"reason"`
	HeldUntil   time.Time     `json:"held_until,omitzero"`
	RTT         time.Duration `json:"rtt_ns"`
	SmoothedRTT time.Duration `json:"srtt_ns"`
	DetectTime  time.Duration `json:"detect_time_ns"` // silence that takes the lane down, now
	Loss        float64       `json:"loss"`           // of the recent probes whose fate is known
	Sent        uint64        `json:"probes_sent"`
	Received    uint64        `json:"probes_answered"`
}

// Status returns the session's state at now.
func (s *Session) Status(now time.Time) SessionStatus {
	st := SessionStatus{
		Up: s.up, Since: s.since, Transitions: s.changes, Reason: s.reason,
		RTT: s.rtt, SmoothedRTT: s.srtt, DetectTime: s.DetectTime(), Sent: s.sent, Received: s.received,
	}
	if now.Before(s.heldUntil) {
		st.HeldUntil = s.heldUntil
	}
	var known, lost int
	for i := range s.ring {
		r := &s.ring[i]
		if r.seq == 0 || (!r.answered && now.Sub(r.sent) < s.p.Detect()) {
			continue // unsent, or still in flight
		}
		known++
		if !r.answered {
			lost++
		}
	}
	if known > 0 {
		st.Loss = float64(lost) / float64(known)
	}
	return st
}
