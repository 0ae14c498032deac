//go:build linux

// Package xdp is the demux's fast path: an XDP program (demux.c) that
// takes the packets the local network sends to the remote prefixes in the
// driver and sends each inside GENEVE to its lane's gateway, choosing the
// lane exactly as the userspace demux does (flowhash). What flows through:
//
//	selector snapshot + resolved gateways (Publish) -> one inner map swap
//	frames on the LAN interface -> xdp_demux -> XDP_TX / redirect to a
//	gateway, or XDP_PASS to the kernel (and so to the userspace demux)
//	per-CPU counters -> Counters, Status, Prometheus
//	packets passed up, and the userspace demux's Finished -> the
//	hand-over ledger, which keeps a flow behind what it has up there
//
// The userspace demux stays: it takes what the program passes up
// (fragments, options, ICMP errors, packets over the MTU, lanes whose
// gateway has no resolved MAC) and runs alone where XDP is off.
package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/clusterpeer/clusterpeer/dataplane/geneveauth"
	"github.com/clusterpeer/clusterpeer/flowhash"
)

// laneSlots is LANE_SLOTS in demux.c: the snapshot map's per-lane part.
const laneSlots = flowhash.MaxLaneID + 1

// keyWords is KEY_WORDS in demux.c: the snapshot's flow-hash key after
// its table, so that a new key switches with the table it built.
const keyWords = 4

// snapStride is an array map element's size in its memory mapping: the
// kernel rounds each value up to 8 bytes.
const snapStride = 8

// Mode is how the program is attached.
type Mode string

const (
	Native  Mode = "native"  // in the driver; falls back to generic
	Generic Mode = "generic" // in the kernel's receive path, any interface
	Off     Mode = "off"     // userspace demux only
)

// ParseMode reads --xdp.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Native, Generic, Off:
		return m, nil
	}
	return "", fmt.Errorf("--xdp %q: want native, generic or off", s)
}

// Config is what the program needs to choose as the Go demux does.
type Config struct {
	Key        flowhash.Key
	HashMode   flowhash.Mode
	Symmetric  bool
	TableSize  uint32 // flowhash.DefaultTableSize if zero
	PinFlows   int    // pin map size; flowhash.DefaultPinCapacity if zero
	MTU        int    // largest inner packet a lane carries
	VNI        uint32
	Remote     []netip.Prefix   // destinations the program handles; others pass
	IngressMAC net.HardwareAddr // the attached interface's address
	// Seal makes the program seal every frame as geneveauth does
	// (security.geneve_auth), as Sender; each target carries its key.
	Seal   bool
	Sender uint8
}

// SealKey is the key a lane's frames are sealed with now.
type SealKey struct {
	Key geneveauth.Key
	ID  uint8
}

// Target is a lane's gateway as this host reaches it.
type Target struct {
	Lane    flowhash.LaneID
	Ifindex int // egress interface; 0: unresolved, the lane's packets go to userspace
	SrcMAC  net.HardwareAddr
	DstMAC  net.HardwareAddr
	Src     netip.Addr     // this host's address toward the gateway (IPv4)
	Dst     netip.AddrPort // the gateway's GENEVE address (IPv4)
	Seal    *SealKey       // a sealing program's key for the lane; without one its packets go to userspace
}

// Program is the loaded XDP program and its maps.
type Program struct {
	objs      demuxObjects
	tableSize uint32
	// The snapshot maps, one per target bank: the one in use and the one
	// the next Publish fills, through memory (a batch update of 64k
	// entries took 15 ms here, the copy takes microseconds).
	snaps   [2]*ebpf.Map
	snapMem [2]*ebpf.Memory
	snapBuf []byte // the next snapshot, built whole
	sealed  bool
	pins    *pinSweep
	// The seal counters' memory, shared with the userspace sealers
	// (SealCounter); never unmapped, as sealers outlive the program.
	counters []byte
	recent   *geneveauth.Recent // the tags sealed lately, shared the same way
	// The hand-over ledger's memory (handover.go), shared with the
	// userspace demux's loops (Finished) the same way.
	ledger     []byte
	words      flowhash.Hasher // the tuple's canonical words, as the program makes them
	remote     []netip.Prefix
	mtu        int           // the lane MTU: the program counts no pass of a larger packet
	gateOpened atomic.Int64  // when Publish last set the gate (Unix ns)
	writtenOff atomic.Uint64 // ledger entries written off (tidyLedger)

	mu      sync.Mutex
	bank    uint32               // target bank of the snapshot in use
	written [2][]flowhash.LaneID // lanes with a target in each bank
	ports   map[int]bool         // interfaces in tx_ports
	// published is the snapshot version in the map: an atomic, for
	// WaitPublished to read while a Publish holds mu through its grace
	// period.
	published atomic.Uint64
	snap      *flowhash.Snapshot // that snapshot, which the pin sweep judges by
	// The last key published and its epoch (KEY_EPOCH in demux.c): a
	// pin's outer source port holds only under the key it was hashed
	// with, and a pin outlives a key change.
	key      [2]uint64
	keyEpoch uint32
	targets  []Target          // as last published
	lanes    []flowhash.LaneID // lanes of the last snapshot, for counters
	link     link.Link
	attached Attachment
}

// Attachment says where and how the program runs.
type Attachment struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	Mode      Mode   `json:"mode"`
}

// Load loads the program and its maps into the kernel, configured from
// cfg. It does not attach it.
func Load(cfg Config) (*Program, error) {
	if cfg.TableSize == 0 {
		cfg.TableSize = flowhash.DefaultTableSize
	}
	if cfg.PinFlows == 0 {
		cfg.PinFlows = flowhash.DefaultPinCapacity
	}
	if len(cfg.IngressMAC) != 6 {
		return nil, fmt.Errorf("xdp: ingress MAC %q: want 6 bytes", cfg.IngressMAC)
	}
	if err := flowhash.CheckTableSize(cfg.TableSize, 0); err != nil {
		return nil, err
	}
	spec, err := loadDemux()
	if err != nil {
		return nil, err
	}
	h := flowhash.NewHasher(cfg.Key, cfg.HashMode, cfg.Symmetric)
	k0, k1 := h.KeyWords()
	sym := uint32(0)
	if cfg.Symmetric {
		sym = 1
	}
	set := []struct {
		name string
		v    any
	}{
		{"key0", k0}, {"key1", k1}, {"table_size", cfg.TableSize},
		{"hash_mode", uint32(cfg.HashMode)}, {"symmetric", sym},
		{"lane_mtu", uint32(cfg.MTU)}, {"vni", cfg.VNI},
		{"pin_tcp_idle", pinTCPIdle}, {"pin_other_idle", pinOtherIdle},
		{"ingress_mac", [6]byte(cfg.IngressMAC)},
		{"sealed", boolU32(cfg.Seal)}, {"seal_sender", uint32(cfg.Sender)},
	}
	if len(cfg.Remote) <= remoteInline {
		var addr, mask [remoteInline][2]uint64
		for i, pfx := range cfg.Remote {
			addr[i], mask[i] = remoteWords(pfx)
		}
		set = append(set, []struct {
			name string
			v    any
		}{{"remote_inline", uint32(len(cfg.Remote))}, {"remote_addr", addr}, {"remote_mask", mask}}...)
	}
	for _, s := range set {
		if err := spec.Variables[s.name].Set(s.v); err != nil {
			return nil, fmt.Errorf("xdp: set %s: %w", s.name, err)
		}
	}
	spec.Maps["pins"].MaxEntries = uint32(cfg.PinFlows)
	if !cfg.Seal {
		spec.Maps["seal_recent"].MaxEntries = 1 // written only by a sealing program
	}
	inner := spec.Maps["snapshots"].InnerMap
	inner.MaxEntries = laneSlots + cfg.TableSize + keyWords + 1 // and KEY_EPOCH
	inner.Flags |= unix.BPF_F_MMAPABLE
	if cfg.Seal && cfg.MTU > sealMaxLen {
		return nil, fmt.Errorf("xdp: a sealing program carries inner packets up to %d bytes, the lane MTU is %d", sealMaxLen, cfg.MTU)
	}
	p := &Program{tableSize: cfg.TableSize, ports: map[int]bool{}, sealed: cfg.Seal, pins: newPinSweep(cfg.PinFlows),
		words: h, remote: slices.Clone(cfg.Remote), mtu: cfg.MTU}
	p.snapBuf = make([]byte, snapStride*int(inner.MaxEntries))
	for i := range p.snaps {
		m, err := ebpf.NewMap(inner)
		if err != nil {
			p.closeSnaps()
			return nil, fmt.Errorf("xdp: snapshot map: %w", err)
		}
		p.snaps[i] = m
		if p.snapMem[i], err = m.Memory(); err != nil {
			p.closeSnaps()
			return nil, fmt.Errorf("xdp: map the snapshot: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		p.closeSnaps()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("xdp: load program: %+v", ve)
		}
		return nil, fmt.Errorf("xdp: load program: %w", err)
	}
	if p.ledger, err = unix.Mmap(p.objs.Handover.FD(), 0, ledgerLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		p.Close()
		return nil, fmt.Errorf("xdp: map the hand-over ledger: %w", err)
	}
	if cfg.Seal {
		p.counters, err = unix.Mmap(p.objs.SealCounters.FD(), 0, laneSlots*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("xdp: map the seal counters: %w", err)
		}
		mem, err := unix.Mmap(p.objs.SealRecent.FD(), 0, geneveauth.RecentSlots*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("xdp: map the sealed tags: %w", err)
		}
		p.recent = geneveauth.RecentOn(mem)
	}
	for _, pfx := range cfg.Remote {
		if err := p.objs.Remote.Put(remoteKey(pfx), uint8(1)); err != nil {
			p.Close()
			return nil, fmt.Errorf("xdp: remote prefix %s: %w", pfx, err)
		}
	}
	return p, nil
}

// sealMaxLen is SEAL_MAX_LEN in demux.c.
const sealMaxLen = 9216

// SealCounter is lane's seal counter in the program's map, for the
// userspace sealer of the lane to share (geneveauth.NewSealerOn); nil
// if the program does not seal.
func (p *Program) SealCounter(lane flowhash.LaneID) *atomic.Uint64 {
	if p.counters == nil || lane == 0 || lane > flowhash.MaxLaneID {
		return nil
	}
	return (*atomic.Uint64)(unsafe.Pointer(&p.counters[8*int(lane)]))
}

// SealRecent is where the program notes the tags of the frames it
// sealed, for the userspace sealers to note theirs in too
// (geneveauth.Sealer.Remember); nil if the program does not seal.
func (p *Program) SealRecent() *geneveauth.Recent { return p.recent }

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// remoteKey is a prefix as the program's LPM trie holds it: IPv4 mapped
// into IPv6, as the tuple's addresses are.
func remoteKey(p netip.Prefix) demuxRemoteKey {
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return demuxRemoteKey{Prefixlen: uint32(bits), Addr: p.Masked().Addr().As16()}
}

// remoteInline is REMOTE_INLINE in demux.c: up to this many remote
// prefixes the program compares against constants, beyond it it looks
// them up in its trie.
const remoteInline = 4

// remoteWords is p as the program's inline compare reads it: the trie
// key's address and p's mask over it, each as two native-endian words.
func remoteWords(p netip.Prefix) (addr, mask [2]uint64) {
	k := remoteKey(p)
	var m [16]byte
	for i := range int(k.Prefixlen) {
		m[i/8] |= 0x80 >> (i % 8)
	}
	for w := range 2 {
		addr[w] = binary.NativeEndian.Uint64(k.Addr[8*w:])
		mask[w] = binary.NativeEndian.Uint64(m[8*w:])
	}
	return addr, mask
}

// Attach attaches the program to ifname. Native mode falls back to
// generic (with a log line) where the driver has no XDP support.
func (p *Program) Attach(ifname string, mode Mode, log *slog.Logger) (Attachment, error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return Attachment{}, fmt.Errorf("xdp: interface %s: %w", ifname, err)
	}
	flags := link.XDPGenericMode
	if mode == Native {
		flags = link.XDPDriverMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: p.objs.XdpDemux, Interface: iface.Index, Flags: flags})
	if err != nil && mode == Native {
		log.Warn("xdp: native mode not available; attaching in generic mode (slower; senders must not use TSO/GSO toward this interface)",
			"interface", ifname, "err", err)
		mode = Generic
		l, err = link.AttachXDP(link.XDPOptions{Program: p.objs.XdpDemux, Interface: iface.Index, Flags: link.XDPGenericMode})
	}
	if err != nil {
		return Attachment{}, fmt.Errorf("xdp: attach to %s: %w", ifname, err)
	}
	p.mu.Lock()
	p.link = l
	p.attached = Attachment{Interface: ifname, Ifindex: iface.Index, Mode: mode}
	p.mu.Unlock()
	return p.attached, nil
}

// Close detaches the program and releases its maps.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.link != nil {
		errs = append(errs, p.link.Close())
		p.link = nil
	}
	errs = append(errs, p.objs.Close())
	p.closeSnaps()
	return errors.Join(errs...)
}

// closeSnaps closes the snapshot maps; the kernel frees them when the
// memory mappings go too (at the next GC, when nothing refers to them).
func (p *Program) closeSnaps() {
	for i, m := range p.snaps {
		if m != nil {
			m.Close()
		}
		p.snaps[i], p.snapMem[i] = nil, nil
	}
}

// DemuxProgram is the XDP program, for BPF_PROG_TEST_RUN in tests.
func (p *Program) DemuxProgram() *ebpf.Program { return p.objs.XdpDemux }

// Published is the selector snapshot version the maps hold.
func (p *Program) Published() uint64 { return p.published.Load() }

// WaitPublished waits, at most limit, until the maps hold the selector
// snapshot version v or a later one; false if they did not in time. A
// Publish returns after an RCU grace period: no run of the program
// still reads the snapshot before, and what those runs sent is queued
// on the interface. The demux waits so before it probes a failed lane
// to end its settle window (demux.LaneConfig.FastPathFence).
func (p *Program) WaitPublished(v uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for p.published.Load() < v {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Microsecond) // Sync was kicked: a publish takes about a grace period
	}
	return true
}

// Publish makes the program choose from snap and send to targets. It
// writes the target bank not in use and that bank's snapshot map, which
// names it, then swaps the snapshot in: packets see the old lane set or
// the new, never a mix. A lane
// without a target (or an unresolved one) has its packets passed up.
func (p *Program) Publish(snap *flowhash.Snapshot, targets []Target) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if snap.Table.Size() != int(p.tableSize) {
		return fmt.Errorf("xdp: snapshot table has %d slots, the program %d", snap.Table.Size(), p.tableSize)
	}
	bank := p.bank ^ 1
	var written []flowhash.LaneID
	for _, t := range targets {
		v, err := t.value(p.sealed)
		if err != nil {
			return err
		}
		if v.Ifindex != 0 && v.Ifindex != uint32(p.attached.Ifindex) && !p.ports[t.Ifindex] {
			if err := p.objs.TxPorts.Put(uint32(t.Ifindex), uint32(t.Ifindex)); err != nil {
				return fmt.Errorf("xdp: redirect port %d: %w", t.Ifindex, err)
			}
			p.ports[t.Ifindex] = true
		}
		if err := p.objs.Targets.Put(bank*laneSlots+uint32(t.Lane), v); err != nil {
			return fmt.Errorf("xdp: lane %d target: %w", t.Lane, err)
		}
		written = append(written, t.Lane)
	}
	for _, id := range p.written[bank] {
		if !slices.Contains(written, id) {
			if err := p.objs.Targets.Put(bank*laneSlots+uint32(id), demuxTarget{}); err != nil {
				return fmt.Errorf("xdp: clear lane %d target: %w", id, err)
			}
		}
	}

	// The map of this bank went out of use at the last swap, and the
	// kernel returns from a map-in-map update only after an RCU grace
	// period: no program still reads it.
	buf := p.snapBuf
	clear(buf)
	put := func(i int, v uint32) { binary.NativeEndian.PutUint32(buf[i*snapStride:], v) }
	put(0, bank)
	lanes := make([]flowhash.LaneID, 0, len(snap.Lanes))
	for _, l := range snap.Lanes {
		put(int(l.ID), snap.Gen(l.ID))
		lanes = append(lanes, l.ID)
	}
	for i, id := range snap.Table.Slots() {
		put(laneSlots+i, uint32(id))
	}
	k0, k1 := snap.Hasher().KeyWords()
	for i, w := range [keyWords]uint32{uint32(k0), uint32(k0 >> 32), uint32(k1), uint32(k1 >> 32)} {
		put(laneSlots+int(p.tableSize)+i, w)
	}
	if key := [2]uint64{k0, k1}; key != p.key {
		p.key, p.keyEpoch = key, (p.keyEpoch+1)&0xffff
	}
	put(laneSlots+int(p.tableSize)+keyWords, p.keyEpoch)
	if _, err := p.snapMem[bank].WriteAt(buf, 0); err != nil {
		return fmt.Errorf("xdp: fill snapshot: %w", err)
	}
	p.openGate(time.Now()) // flows may move from the userspace path to the program's
	if err := p.objs.Snapshots.Put(uint32(0), p.snaps[bank]); err != nil {
		return fmt.Errorf("xdp: swap snapshot: %w", err)
	}
	p.bank, p.written[bank], p.snap = bank, written, snap
	p.published.Store(snap.Version)
	p.targets, p.lanes = slices.Clone(targets), lanes
	return nil
}

func (t Target) value(sealed bool) (demuxTarget, error) {
	var v demuxTarget
	if t.Lane == 0 || t.Lane > flowhash.MaxLaneID {
		return v, fmt.Errorf("xdp: lane id %d out of range", t.Lane)
	}
	if t.Ifindex == 0 || sealed && t.Seal == nil {
		return v, nil
	}
	if sealed {
		v.KeyId = t.Seal.ID
		v.SealK0 = binary.LittleEndian.Uint64(t.Seal.Key[0:8])
		v.SealK1 = binary.LittleEndian.Uint64(t.Seal.Key[8:16])
	}
	if len(t.SrcMAC) != 6 || len(t.DstMAC) != 6 || !t.Src.Is4() || !t.Dst.Addr().Is4() {
		return v, fmt.Errorf("xdp: lane %d target: want IPv4 addresses and 6-byte MACs, have %s -> %s (%s -> %s)",
			t.Lane, t.Src, t.Dst, t.SrcMAC, t.DstMAC)
	}
	v.Ifindex = uint32(t.Ifindex)
	copy(v.SrcMac[:], t.SrcMAC)
	copy(v.DstMac[:], t.DstMAC)
	s, d := t.Src.As4(), t.Dst.Addr().As4()
	v.Saddr = nativeU32(s)
	v.Daddr = nativeU32(d)
	v.Dport = nativeU16(t.Dst.Port())
	return v, nil
}

// nativeU32 is a.b.c.d as the program reads it from the packet: network
// byte order in memory (the generated struct holds it as a native uint32).
func nativeU32(b [4]byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// nativeU16 is a port in network byte order in memory.
func nativeU16(port uint16) uint16 { return port>>8 | port<<8 }
