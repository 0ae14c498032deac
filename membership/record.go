// Package membership keeps a peering's lanes in etcd: gateways register
// themselves (side, slot, WireGuard public key, underlay endpoint, GENEVE
// address, weight) under a lease they keep alive, and demuxes and peer
// gateways watch the registrations and apply them live.
//
//	gateway --Register (signed record, leased key)--> etcd
//	etcd --View (list, then watch; every record verified)--> demux lanes, peer's WireGuard peer
//
// A record is signed with the peering's Ed25519 enrolment key, names the
// lease it is stored under and counts its own updates, so write access to
// etcd alone can neither insert a gateway nor bring an old record back.
// The file's lanes stay as they are; the store only adds slots the file
// does not use. When the store is unreachable, what was last known stays:
// the control plane never takes a lane down, lane health does.
package membership

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/clusterpeer/clusterpeer/config"
	"github.com/clusterpeer/clusterpeer/tunnel/wgkey"
)

// State is what a registered gateway says of itself.
type State string

const (
	StateUp      State = "up"
	StateLeaving State = "leaving" // a planned stop: drain its lane, then forget it
)

// Record is one gateway's registration. Only public facts: the private
// key never leaves the gateway.
type Record struct {
	Version   int         `json:"v"`
	Peering   string      `json:"peering"`
	Side      config.Side `json:"side"`
	Slot      int         `json:"slot"`
	Name      string      `json:"name"`
	State     State       `json:"state"`
	PublicKey string      `json:"public_key"`
	Endpoint  string      `json:"endpoint"` // WireGuard, as the peer gateway dials it
	Geneve    string      `json:"geneve"`   // where this side's demux sends GENEVE
	Weight    uint32      `json:"weight"`
	// Lease is the etcd lease the record is stored under: a copy put
	// under any other lease is a replay. Serial grows with each update
	// under one lease, so an older update cannot come back either.
	Lease  int64     `json:"lease"`
	Serial uint64    `json:"serial"`
	Issued time.Time `json:"issued"` // for operators' eyes (clocks differ; nothing relies on it)
}

// recordVersion is the only record format there is.
const recordVersion = 1

// maxRecord bounds what Open reads: a record is a few hundred bytes.
const maxRecord = 4096

// envelope is the stored value: the record's exact bytes and their
// signature, so that verifying needs no canonical re-encoding.
type envelope struct {
	Record json.RawMessage `json:"record"`
	Sig    string          `json:"sig"`
}

// Seal signs r and returns the value to store.
func Seal(r Record, key ed25519.PrivateKey) ([]byte, error) {
	r.Version = recordVersion
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return json.Marshal(envelope{Record: body, Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(key, signed(body)))})
}

// signed is what a signature covers: a context string first, so that a
// signature made for something else with the same key never verifies.
func signed(body []byte) []byte {
	return append([]byte("clusterpeer membership record v1\x00"), body...)
}

// Reject is why a stored value was not taken as a gateway.
type Reject string

const (
	RejectMalformed   Reject = "malformed"     // not an envelope, or its record does not decode
	RejectSignature   Reject = "bad_signature" // not signed with the enrolment key (or altered)
	RejectKey         Reject = "wrong_key"     // stored under another peering, side or slot than it names
	RejectLease       Reject = "lease_mismatch"
	RejectStale       Reject = "stale" // an older update of a record already seen
	RejectInvalid     Reject = "invalid"
	RejectFileSlot    Reject = "file_slot" // the slot is a lane of the file
	RejectUnknownSide Reject = "unknown_side"
)

// Rejects lists every reason, for metrics that start at zero.
var Rejects = []Reject{RejectMalformed, RejectSignature, RejectKey, RejectLease, RejectStale, RejectInvalid, RejectFileSlot, RejectUnknownSide}

// RejectError is a record refused, and why.
type RejectError struct {
	Reason Reject
	Detail string
}

func (e *RejectError) Error() string { return string(e.Reason) + ": " + e.Detail }

func reject(r Reject, format string, args ...any) error {
	return &RejectError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf is err's reject reason ("" if it is not a RejectError).
func ReasonOf(err error) Reject {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// Open verifies a stored value and decodes its record: signed by the
// enrolment key, the record's own checks passed. The caller checks where
// it was stored (Keys.Check) and under which lease.
func Open(value []byte, verify ed25519.PublicKey) (Record, error) {
	var r Record
	if len(value) > maxRecord {
		return r, reject(RejectMalformed, "%d bytes: a record has at most %d", len(value), maxRecord)
	}
	var env envelope
	if err := json.Unmarshal(value, &env); err != nil || len(env.Record) == 0 {
		return r, reject(RejectMalformed, "not a signed record")
	}
	sig, err := base64.StdEncoding.DecodeString(env.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize || !ed25519.Verify(verify, signed(env.Record), sig) {
		return r, reject(RejectSignature, "not signed with this peering's enrolment key")
	}
	if err := json.Unmarshal(env.Record, &r); err != nil {
		return Record{}, reject(RejectMalformed, "record: %v", err)
	}
	if err := r.check(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// check validates a record's own fields (signed ones too: the enrolment
// key may sign a mistake, and no reader may panic on one).
func (r *Record) check() error {
	switch {
	case r.Version != recordVersion:
		return reject(RejectInvalid, "record version %d, want %d", r.Version, recordVersion)
	case r.Side != config.SideA && r.Side != config.SideB:
		return reject(RejectUnknownSide, "side %q", r.Side)
	case r.Slot < 1 || r.Slot > config.MaxSlot:
		return reject(RejectInvalid, "slot %d: want 1..%d", r.Slot, config.MaxSlot)
	case r.State != StateUp && r.State != StateLeaving:
		return reject(RejectInvalid, "state %q", r.State)
	case r.Weight < 1 || r.Weight > 1000:
		return reject(RejectInvalid, "weight %d: want 1..1000", r.Weight)
	case r.Name == "" || len(r.Name) > 32:
		return reject(RejectInvalid, "name %q", r.Name)
	}
	if _, err := wgkey.Parse(r.PublicKey); err != nil {
		return reject(RejectInvalid, "public key: %v", err)
	}
	for _, f := range []struct{ name, v string }{{"endpoint", r.Endpoint}, {"geneve", r.Geneve}} {
		ap, err := netip.ParseAddrPort(f.v)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() {
			return reject(RejectInvalid, "%s %q: want ip:port", f.name, f.v)
		}
	}
	return nil
}

// Gateway is the record as the file's gateway type, for the code that
// runs lanes (the record was checked: its addresses parse).
func (r *Record) Gateway() config.Gateway {
	g := config.Gateway{Name: r.Name, PublicKey: r.PublicKey}
	g.Geneve.AddrPort = netip.MustParseAddrPort(r.Geneve)
	g.Endpoint.AddrPort = netip.MustParseAddrPort(r.Endpoint)
	g.Public, _ = wgkey.Parse(r.PublicKey)
	return g
}

// Keys lays a peering's records out in the store:
// <prefix><peering>/gateways/<side>/<slot, 4 digits>.
type Keys struct {
	Prefix, Peering string
}

// Gateways is the prefix of every registration of the peering.
func (k Keys) Gateways() string { return k.Prefix + k.Peering + "/gateways/" }

// Side is the prefix of one side's registrations.
func (k Keys) Side(s config.Side) string { return k.Gateways() + string(s) + "/" }

// Slot is the key of one registration.
func (k Keys) Slot(s config.Side, slot int) string { return fmt.Sprintf("%s%04d", k.Side(s), slot) }

// Parse reads side and slot from a registration's key.
func (k Keys) Parse(key string) (config.Side, int, bool) {
	rest, ok := strings.CutPrefix(key, k.Gateways())
	if !ok {
		return "", 0, false
	}
	side, num, ok := strings.Cut(rest, "/")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || len(num) != 4 || (side != string(config.SideA) && side != string(config.SideB)) {
		return "", 0, false
	}
	return config.Side(side), n, true
}

// Check says whether r may be stored at key under lease: a record copied
// to another slot or peering, or under another lease, is refused.
func (k Keys) Check(key string, lease int64, r Record) error {
	side, slot, ok := k.Parse(key)
	if !ok || r.Peering != k.Peering || side != r.Side || slot != r.Slot {
		return reject(RejectKey, "%s holds a record of %s/%s/%d", key, r.Peering, r.Side, r.Slot)
	}
	if lease == 0 || lease != r.Lease {
		return reject(RejectLease, "stored under lease %x, signed for lease %x", lease, r.Lease)
	}
	return nil
}
