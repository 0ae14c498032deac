package udpbatch

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

func listen(t *testing.T, addr string, o Options) *Conn {
	t.Helper()
	c, err := Listen(netip.MustParseAddrPort(addr), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRoundTrip: what a Writer sends arrives at a Reader whole, in order
// and from the Writer's address, with the offloads on either side or
// off: ten equal datagrams (one segmented send with GSO) and a short one
// that ends the run, then two of another size. One longer than the
// reader's buffer is marked (negative size), never cut.
func TestRoundTrip(t *testing.T) {
	for _, gso := range []bool{true, false} {
		for _, gro := range []bool{true, false} {
			t.Run(fmt.Sprintf("gso=%v,gro=%v", gso, gro), func(t *testing.T) {
				rx := listen(t, "127.0.0.1:0", Options{GRO: gro, Buffer: 1 << 20})
				tx := listen(t, "127.0.0.1:0", Options{GSO: gso})
				dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())
				var want [][]byte
				for i := range 10 {
					want = append(want, bytes.Repeat([]byte{byte(i)}, 100))
				}
				want = append(want, []byte("short"), bytes.Repeat([]byte{'x'}, 200), bytes.Repeat([]byte{'y'}, 200), make([]byte, 301))
				bufs := make([][]byte, len(want))
				for i, w := range want {
					bufs[i] = make([]byte, len(w), 2048) // room to append a run, as WireGuard's buffers have
					copy(bufs[i], w)
				}
				if err := tx.NewWriter(128).Write(bufs, dst); err != nil {
					t.Fatal(err)
				}
				for i, b := range bufs {
					if !bytes.Equal(b, want[i]) {
						t.Fatalf("write changed buffer %d", i)
					}
				}
				r := rx.NewReader(128)
				in := make([][]byte, 128)
				for i := range in {
					in[i] = make([]byte, 300)
				}
				sizes, srcs := make([]int, 128), make([]netip.AddrPort, 128)
				var got []string
				rx.SetReadDeadline(time.Now().Add(2 * time.Second))
				for len(got) < len(want) {
					n, err := r.Read(in, sizes, srcs)
					if err != nil {
						t.Fatalf("after %d: %v", len(got), err)
					}
					for i := range n {
						if srcs[i].Port() != tx.Port() || srcs[i].Addr() != dst.Addr() {
							t.Errorf("sender %v, want 127.0.0.1:%d", srcs[i], tx.Port())
						}
						if sizes[i] < 0 {
							got = append(got, "oversize")
							continue
						}
						got = append(got, string(in[i][:sizes[i]]))
					}
				}
				for i, w := range want[:len(want)-1] {
					if got[i] != string(w) {
						t.Errorf("datagram %d: %d bytes %.8q, want %d bytes %.8q", i, len(got[i]), got[i], len(w), w)
					}
				}
				if got[len(want)-1] != "oversize" {
					t.Errorf("a datagram longer than the buffer read as %d bytes", len(got[len(want)-1]))
				}
				t.Logf("gro=%v gso=%v", rx.GRO(), tx.GSO())
			})
		}
	}
}

// TestReadViews: ReadViews leaves each datagram where the kernel wrote
// it: with GRO a Writer's segmented send (one message) comes back as
// views into one receive buffer, back to back, in order; without, one
// buffer a datagram, and one longer than its buffer is a nil view.
func TestReadViews(t *testing.T) {
	for _, gro := range []bool{true, false} {
		t.Run(fmt.Sprintf("gro=%v", gro), func(t *testing.T) {
			rx := listen(t, "127.0.0.1:0", Options{GRO: gro, Buffer: 1 << 20})
			tx := listen(t, "127.0.0.1:0", Options{GSO: true})
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())
			var out [][]byte
			for i := range 10 {
				b := make([]byte, 100, 2048) // room to append a run, as WireGuard's buffers have
				copy(b, bytes.Repeat([]byte{byte(i)}, 100))
				out = append(out, b)
			}
			if err := tx.NewWriter(64).Write(out, dst); err != nil {
				t.Fatal(err)
			}
			if err := tx.NewWriter(64).Write([][]byte{make([]byte, 301)}, dst); err != nil {
				t.Fatal(err)
			}
			recv := make([][]byte, 64)
			for i := range recv {
				recv[i] = make([]byte, 300)
			}
			if rx.GRO() {
				recv = recv[:Reads(64)]
				for i := range recv {
					recv[i] = make([]byte, MaxDatagram)
				}
			}
			views, srcs := make([][]byte, 64), make([]netip.AddrPort, 64)
			r := rx.NewReader(64)
			var got [][]byte
			rx.SetReadDeadline(time.Now().Add(2 * time.Second))
			for len(got) < 11 {
				n, err := r.ReadViews(recv, views, srcs)
				if err != nil {
					t.Fatalf("after %d: %v", len(got), err)
				}
				if len(got) == 0 && rx.GRO() && tx.GSO() {
					// One segmented send, one coalesced read: the ten
					// lie back to back in the first receive buffer.
					for i := range 10 {
						if i >= n || &views[i][0] != &recv[0][100*i] {
							t.Fatalf("datagram %d of the run is not where one GSO send puts it (%d read)", i, n)
						}
					}
				}
				for _, v := range views[:n] {
					if v != nil && !within(v, recv) {
						t.Fatalf("datagram %d is not in a receive buffer", len(got))
					}
					got = append(got, bytes.Clone(v)) // the next read reuses recv
				}
			}
			for i, w := range out {
				if !bytes.Equal(got[i], w) {
					t.Errorf("datagram %d: % x", i, got[i][:min(len(got[i]), 4)])
				}
			}
			if last := got[10]; rx.GRO() && len(last) != 301 || !rx.GRO() && last != nil {
				t.Errorf("the 301-byte datagram read as %d bytes (nil: %v)", len(last), last == nil)
			}
			t.Logf("gro=%v gso=%v", rx.GRO(), tx.GSO())
		})
	}
}

// within reports whether (non-empty) v lies inside one of bufs.
func within(v []byte, bufs [][]byte) bool {
	for _, b := range bufs {
		for i := 0; i+len(v) <= len(b); i++ {
			if &b[i] == &v[0] {
				return true
			}
		}
	}
	return false
}

// TestIPv6: a v6 socket reads its senders as v6, and a v4 socket refuses
// a v6 destination with an error.
func TestIPv6(t *testing.T) {
	rx, err := Listen(netip.MustParseAddrPort("[::1]:0"), Options{GRO: true})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer rx.Close()
	tx := listen(t, "[::1]:0", Options{GSO: true})
	dst := netip.AddrPortFrom(netip.IPv6Loopback(), rx.Port())
	if err := tx.NewWriter(8).Write([][]byte{[]byte("six")}, dst); err != nil {
		t.Fatal(err)
	}
	in, sizes, srcs := [][]byte{make([]byte, 100)}, make([]int, 1), make([]netip.AddrPort, 1)
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := rx.NewReader(1).Read(in, sizes, srcs)
	if err != nil || n != 1 || string(in[0][:sizes[0]]) != "six" || srcs[0] != netip.AddrPortFrom(netip.IPv6Loopback(), tx.Port()) {
		t.Fatalf("read %d (%v): %q from %v", n, err, in[0][:max(sizes[0], 0)], srcs[0])
	}
	v4 := listen(t, "127.0.0.1:0", Options{})
	if err := v4.NewWriter(8).Write([][]byte{[]byte("x")}, dst); err == nil {
		t.Error("a v4 socket sent to a v6 address")
	}
}

// TestBatchLongerThanWriter: a Writer sends more buffers than its batch
// in several calls, in order.
func TestBatchLongerThanWriter(t *testing.T) {
	rx := listen(t, "127.0.0.1:0", Options{Buffer: 1 << 20})
	tx := listen(t, "127.0.0.1:0", Options{})
	var bufs [][]byte
	for i := range 10 {
		bufs = append(bufs, []byte{byte(i)})
	}
	if err := tx.NewWriter(3).Write(bufs, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())); err != nil {
		t.Fatal(err)
	}
	in := make([][]byte, 16)
	for i := range in {
		in[i] = make([]byte, 10)
	}
	sizes, srcs := make([]int, 16), make([]netip.AddrPort, 16)
	r := rx.NewReader(16)
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	for next := 0; next < 10; {
		n, err := r.Read(in, sizes, srcs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if sizes[i] != 1 || in[i][0] != byte(next) {
				t.Fatalf("datagram %d: % x", next, in[i][:max(sizes[i], 0)])
			}
			next++
		}
	}
}

// TestNoAllocations: reading and writing allocate nothing, with the
// offloads and without.
func TestNoAllocations(t *testing.T) {
	for _, off := range []bool{true, false} {
		rx := listen(t, "127.0.0.1:0", Options{GRO: off, Buffer: 4 << 20})
		tx := listen(t, "127.0.0.1:0", Options{GSO: off})
		dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())
		w := tx.NewWriter(8)
		out := [][]byte{make([]byte, 100, 2048), make([]byte, 100, 2048)}
		const runs = 200
		if a := testing.AllocsPerRun(runs, func() {
			if err := w.Write(out, dst); err != nil {
				t.Fatal(err)
			}
		}); a != 0 {
			t.Errorf("offloads %v: %.1f allocations a write", off, a)
		}
		// Eight at a time, so that the 402 datagrams last the runs.
		r := rx.NewReader(8)
		in := make([][]byte, 8)
		for i := range in {
			in[i] = make([]byte, 200)
		}
		sizes, srcs := make([]int, 8), make([]netip.AddrPort, 8)
		rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		read := 0
		if a := testing.AllocsPerRun(10, func() {
			n, err := r.Read(in, sizes, srcs)
			if err != nil {
				t.Fatal(err)
			}
			read += n
		}); a != 0 {
			t.Errorf("offloads %v: %.1f allocations a read", off, a)
		}
		if read == 0 {
			t.Error("nothing read")
		}
		recv, views := in, make([][]byte, 8)
		if rx.GRO() {
			recv = [][]byte{make([]byte, MaxDatagram)}
		}
		read = 0
		if a := testing.AllocsPerRun(10, func() {
			n, err := r.ReadViews(recv, views, srcs)
			if err != nil {
				t.Fatal(err)
			}
			read += n
		}); a != 0 {
			t.Errorf("offloads %v: %.1f allocations a ReadViews", off, a)
		}
		if read == 0 {
			t.Error("nothing read without a copy")
		}
	}
}

// TestClosedReaderReturns: closing the Conn ends a blocked Read with
// net.ErrClosed, as WireGuard's receive loop expects.
func TestClosedReaderReturns(t *testing.T) {
	c, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), Options{GRO: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.NewReader(4).Read(make([][]byte, 4), make([]int, 4), make([]netip.AddrPort, 4))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed socket: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read still blocked after close")
	}
}

// BenchmarkRoundTrip: batches of 64 datagrams of 1,400 bytes written and
// read back over loopback, with the offloads (one segmented send, one
// coalesced read where the kernel can) and without; per datagram.
func BenchmarkRoundTrip(b *testing.B) {
	for _, off := range []bool{true, false} {
		b.Run(fmt.Sprintf("offloads=%v", off), func(b *testing.B) {
			rx, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), Options{GRO: off, Buffer: 8 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer rx.Close()
			tx, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), Options{GSO: off})
			if err != nil {
				b.Fatal(err)
			}
			defer tx.Close()
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rx.Port())
			const batch = 64
			out := make([][]byte, batch)
			in := make([][]byte, 128)
			for i := range out {
				out[i] = make([]byte, 1400, 65536)
			}
			for i := range in {
				in[i] = make([]byte, 1500)
			}
			sizes, srcs := make([]int, len(in)), make([]netip.AddrPort, len(in))
			w, r := tx.NewWriter(batch), rx.NewReader(len(in))
			b.SetBytes(1400)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				if err := w.Write(out, dst); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < batch; {
					n, err := r.Read(in, sizes, srcs)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
