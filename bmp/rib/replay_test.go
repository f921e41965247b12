package rib

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
)

func TestAddPathNegotiation(t *testing.T) {
	tests := []struct {
		name       string
		h          peerHdr
		view       uint8 // flags of the Route Monitoring
		sent, recv byte  // ADD-PATH Send/Receive for IPv4 unicast; 0: not advertised
		want       bool
	}{
		{"adj-rib-in: peer sends, router receives", hdrV4, 0, apReceive, apSend, true},
		{"adj-rib-in: both ways", hdrV4, 0, 3, 3, true},
		{"adj-rib-in: the reverse", hdrV4, 0, apSend, apReceive, false},
		{"adj-rib-in: router only", hdrV4, 0, 3, 0, false},
		{"adj-rib-in: peer only", hdrV4, 0, 0, 3, false},
		{"adj-rib-in post-policy: as pre-policy", hdrV4, flagL, apReceive, apSend, true},
		{"adj-rib-out: router sends, peer receives", hdrV4, flagO, apSend, apReceive, true},
		{"adj-rib-out: the reverse", hdrV4, flagO, apReceive, apSend, false},
		{"adj-rib-out: both ways", hdrV4, flagO | flagL, 3, 3, true},
		{"loc-rib: advertised", hdrLocRIB, 0, apSend, apSend, true},
		{"loc-rib: any mode counts", hdrLocRIB, 0, apReceive, apReceive, true},
		{"loc-rib: not advertised", hdrLocRIB, 0, 0, 0, false},
		{"adj-rib-in: a value past 3 is not understood (RFC 7911 §4)", hdrV4, 0, 7, 7, false},
		{"loc-rib: a value past 3 is not understood", hdrLocRIB, 0, 4, 4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps := func(mode byte) [][]byte {
				c := [][]byte{capMP(1, 1), capMP(2, 1)}
				if mode != 0 {
					c = append(c, capAP(apEntry{1, 1, mode}))
				}
				return c
			}
			v4 := pfx("10.0.0.0/8")
			if tt.want {
				v4 = pfxID(7, "10.0.0.0/8")
			}
			h := tt.h.with(tt.view)
			r := NewRouter(nil, "router test")
			feedAll(r, 1<<20, peerUp(tt.h, caps(tt.sent), caps(tt.recv)),
				rm(h, update(nil, cat(attrsA, nhA), v4)),
				rm(h, update(nil, cat(mpReach(2, 1, "2001:db8::1", pfx("2001:db8::/32")), attrsA), nil)))
			if st := r.Status(); st.State != Keeping {
				t.Fatal(st.Err)
			}
			v := r.views[pkey(h.bytes()[:keyLen])]
			if v == nil || len(v.tables) != 2 {
				t.Fatalf("view %+v", v)
			}
			if v.tables[0].addPath != tt.want || v.tables[1].addPath {
				t.Fatalf("ADD-PATH ipv4 %v ipv6 %v, want %v false", v.tables[0].addPath, v.tables[1].addPath, tt.want)
			}
			if v.tables[0].routes != 1 || v.tables[1].routes != 1 {
				t.Fatalf("routes %d %d", v.tables[0].routes, v.tables[1].routes)
			}
			checkRoundTrip(t, r)
		})
	}
}

// replayUpdates returns the BGP UPDATEs of the Route Monitoring messages in
// a replay, and checks the framing of every message.
func replayUpdates(t *testing.T, replay []byte) (updates [][]byte, types []bmp.Type) {
	t.Helper()
	for _, m := range split(t, replay) {
		typ := bmp.Type(m[5])
		types = append(types, typ)
		if typ != bmp.TypeRouteMonitoring {
			continue
		}
		ph := m[bmp.HeaderLen : bmp.HeaderLen+perPeerLen]
		if !slices.Equal(ph[keyLen:], make([]byte, 8)) {
			t.Fatalf("replayed per-peer header timestamp % x, want zero", ph[keyLen:])
		}
		u := m[bmp.HeaderLen+perPeerLen:]
		if int(binary.BigEndian.Uint16(u[16:])) != len(u) || u[18] != bgpUpdate {
			t.Fatalf("bad replayed UPDATE header % x", u[:19])
		}
		if binary.BigEndian.Uint16(u[19:]) != 0 {
			t.Fatal("replayed UPDATE withdraws routes")
		}
		updates = append(updates, u)
	}
	return updates, types
}

func TestExtendedMessages(t *testing.T) {
	tests := []struct {
		name       string
		sent, recv bool
		max        int
	}{
		{"both OPENs", true, true, maxBGPLen},
		{"sent OPEN only", true, false, stdBGPLen},
		{"neither", false, false, stdBGPLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps := func(ext bool) [][]byte {
				if ext {
					return [][]byte{capMP(1, 1), capMP(2, 1), capExt()}
				}
				return [][]byte{capMP(1, 1), capMP(2, 1)}
			}
			msgs := [][]byte{initiation("r1"), peerUp(hdrExt, caps(tt.sent), caps(tt.recv))}
			var v4, v6 []byte
			const n = 17000 // more NLRI than one extended UPDATE holds
			for i := range n {
				v4 = append(v4, pfx(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))...)
				v6 = append(v6, pfx(fmt.Sprintf("2001:db8:%x::/48", i))...)
			}
			for len(v4) > 0 { // 1000 /24s: 4000 bytes of NLRI, an UPDATE over 4096 bytes
				msgs = append(msgs, rm(hdrExt, update(nil, cat(attrsA, nhA), v4[:4000])))
				v4 = v4[4000:]
			}
			for len(v6) > 0 {
				msgs = append(msgs, rm(hdrExt, update(nil, cat(mpReach(2, 1, "2001:db8::6", v6[:7000]), attrsA), nil)))
				v6 = v6[7000:]
			}
			r := NewRouter(nil, "router test")
			feedAll(r, 1<<16, msgs...)
			if st := r.Stats(); r.Status().State != Keeping || st.Routes != 2*n {
				t.Fatalf("status %v routes %d", r.Status(), st.Routes)
			}
			updates, _ := replayUpdates(t, readSnapshot(t, r))
			largest, total := 0, 0
			for _, u := range updates {
				largest = max(largest, len(u))
				total += len(u)
			}
			if largest > tt.max || largest < tt.max-20 {
				t.Fatalf("largest replayed UPDATE %d bytes, want %d at most and full", largest, tt.max)
			}
			// Full packing: the NLRI and attributes fill all UPDATEs but the
			// last of each table, give or take one NLRI each.
			if minimum := total/tt.max + 1; len(updates)-2 > minimum+1 {
				t.Fatalf("%d UPDATEs for %d bytes, want about %d", len(updates)-2, total, minimum)
			}
			checkRoundTrip(t, r)
		})
	}
}

func TestReplayLayout(t *testing.T) {
	attrsC := cat(origin(), asPath(65001, 64502), med(3))
	msgs := [][]byte{
		initiation("r1"),
		peerUp(hdrV6, allMP, allMP),
		peerUp(hdrV4, allMP, allMP),
		rm(hdrV4, update(nil, cat(attrsA, nhA), cat(pfx("10.1.0.0/16"), pfx("10.2.0.0/16")))),
		rm(hdrV4, update(nil, cat(attrsB, nhA), pfx("10.3.0.0/16"))),
		rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.4.0.0/16"))),
		rm(hdrV6, update(nil, cat(mpReach(2, 1, "2001:db8::2", pfx("2001:db8:1::/48")), attrsC), nil)),
		rm(hdrV6, update(nil, cat(attrsC, nhA), pfx("10.5.0.0/16"))),
		rm(hdrV4.with(flagL), update(nil, cat(attrsC, nhA), pfx("10.6.0.0/16"))),
		bmpMsg(bmp.TypeStatisticsReport, hdrV4.bytes(), u32(0)),
	}
	r := NewRouter(nil, "router test")
	feedAll(r, 1<<20, msgs...)
	replay := readSnapshot(t, r)
	got := split(t, replay)
	// Initiation and Peer Ups exactly as received, peers in the order they
	// came up.
	for i, want := range msgs[:3] {
		if !bytes.Equal(got[i], want) {
			t.Fatalf("replay message %d differs from the one received", i)
		}
	}
	// Then per peer (in up order), RIB and family: one UPDATE per attribute
	// set, then End-of-RIB.
	var desc []string
	for _, m := range got[3:] {
		u := m[bmp.HeaderLen+perPeerLen:]
		k := pkey(m[bmp.HeaderLen : bmp.HeaderLen+keyLen])
		al := int(binary.BigEndian.Uint16(u[21:]))
		nl := len(u) - 23 - al
		switch {
		case al == 0 && nl == 0:
			desc = append(desc, viewName(k)+" eor ipv4")
		case al == 6 && u[24] == attrMPUnrch:
			desc = append(desc, viewName(k)+" eor mp")
		default:
			desc = append(desc, fmt.Sprintf("%s update attrs=%d nlri=%d", viewName(k), al, nl))
		}
	}
	want := []string{
		"2001:db8::2 update attrs=55 nlri=0", // MP_REACH_NLRI (24 bytes, NLRI inside) and 31 bytes of attributes
		"2001:db8::2 eor mp",
		"2001:db8::2 update attrs=31 nlri=3",
		"2001:db8::2 eor ipv4",
		"198.51.100.1 update attrs=31 nlri=9",
		"198.51.100.1 update attrs=31 nlri=3",
		"198.51.100.1 eor ipv4",
		"198.51.100.1/post update attrs=31 nlri=3",
		"198.51.100.1/post eor ipv4",
	}
	slices.Sort(desc[4:6]) // the order of attribute sets within a table is not specified
	slices.Sort(want[4:6])
	if !slices.Equal(desc, want) {
		t.Fatalf("replay:\n%q\nwant:\n%q", desc, want)
	}
	checkRoundTrip(t, r)
}

// TestRoundTrip is the round-trip property on generated streams: a Router
// fed the replay of a snapshot holds the same state, and the same again
// after both are fed the live stream from that message on.
func TestRoundTrip(t *testing.T) {
	for seed := range uint64(3) {
		msgs := genStream(seed, 150+100*int(seed))
		whole := NewRouter(nil, "whole")
		feedAll(whole, 1<<20, msgs...)
		wantWhole := dump(whole)
		for _, cut := range []int{3, len(msgs) / 3, 2 * len(msgs) / 3, len(msgs)} {
			for _, chunk := range []int{1 << 20, 1000, 17 + 1000*int(seed)} {
				t.Run(fmt.Sprintf("seed %d cut %d chunk %d", seed, cut, chunk), func(t *testing.T) {
					r := NewRouter(nil, "router test")
					feedAll(r, chunk, msgs[:cut]...)
					replay := readSnapshot(t, r)
					r2 := NewRouter(nil, "replay")
					feedAll(r2, chunk, replay)
					if a, b := dump(r), dump(r2); a != b {
						t.Fatalf("replayed state differs at message %d:\n%.2000s\n----\n%.2000s", cut, a, b)
					}
					feedAll(r, chunk, msgs[cut:]...)
					feedAll(r2, chunk, msgs[cut:]...)
					if a, b := dump(r), dump(r2); a != b || a != wantWhole {
						t.Fatal("states differ after the live stream")
					}
					if r.Status().State != Keeping {
						t.Fatal(r.Status().Err)
					}
				})
			}
		}
	}
}

// TestSnapshotWhileFeeding reads a snapshot on another goroutine while the
// Router is fed the rest of the stream (withdrawals, re-announcements, Peer
// Downs, a peer coming back): the replay is the state at the snapshot, and
// after Close the Router's state is that of the whole stream.
func TestSnapshotWhileFeeding(t *testing.T) {
	msgs := genStream(7, 800)
	whole := NewRouter(nil, "whole")
	feedAll(whole, 1<<20, msgs...)
	wantWhole := dump(whole)
	for _, cut := range []int{len(msgs) / 4, len(msgs) / 2, len(msgs) - 12, len(msgs) - 3} {
		t.Run(fmt.Sprint("cut ", cut), func(t *testing.T) {
			mem := NewMemory(0)
			r := NewRouter(mem, "router test")
			feedAll(r, 4096, msgs[:cut]...)
			want := dump(r)
			s, err := r.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan []byte)
			go func() {
				var out []byte
				buf := make([]byte, 333)
				for {
					n, err := s.Read(buf)
					out = append(out, buf[:n]...)
					if err != nil {
						if !errors.Is(err, io.EOF) {
							out = nil
						}
						done <- out
						return
					}
					runtime.Gosched()
				}
			}()
			rest := cat(msgs[cut:]...)
			for len(rest) > 0 {
				n := min(500, len(rest))
				r.Feed(rest[:n])
				rest = rest[n:]
				_ = r.Stats()
				runtime.Gosched()
			}
			if _, err := r.Snapshot(); !errors.Is(err, ErrSnapshotOpen) {
				t.Fatalf("second Snapshot: %v, want ErrSnapshotOpen", err)
			}
			replay := <-done
			if replay == nil {
				t.Fatal("replay failed")
			}
			s.Close()
			s.Close()
			if _, err := s.Read(make([]byte, 10)); !errors.Is(err, ErrSnapshotClosed) {
				t.Fatalf("Read after Close: %v", err)
			}
			r2 := NewRouter(nil, "replay")
			r2.Feed(replay)
			if got := dump(r2); got != want {
				t.Fatalf("replay is not the state at the snapshot:\n%.2000s\n----\n%.2000s", want, got)
			}
			r.Feed(nil) // merges the delta
			if dump(r) != wantWhole {
				t.Fatal("state after the merge differs from the whole stream's")
			}
			if st := r.Stats(); st.Bytes != mem.Used() || st.Attrs != whole.Stats().Attrs {
				t.Fatalf("accounting: stats %+v, memory %d, whole %+v", st, mem.Used(), whole.Stats())
			}
			// The next snapshot sees the merged state.
			r3 := NewRouter(nil, "replay 2")
			r3.Feed(readSnapshot(t, r))
			if dump(r3) != wantWhole {
				t.Fatal("second snapshot differs")
			}
		})
	}
}

func TestPending(t *testing.T) {
	msgs := genStream(5, 30)
	stream := cat(msgs...)
	var ends []int // message boundaries
	n := 0
	for _, m := range msgs {
		n += len(m)
		ends = append(ends, n)
	}
	r := NewRouter(nil, "router test")
	for pos, step := 0, 1; pos < len(stream); step = step%397 + 13 {
		next := min(pos+step, len(stream))
		r.Feed(stream[pos:next])
		pos = next
		last := 0
		for _, e := range ends {
			if e <= pos {
				last = e
			}
		}
		if got := r.Pending(); !bytes.Equal(got, stream[last:pos]) {
			t.Fatalf("after %d bytes Pending has %d bytes, want %d", pos, len(got), pos-last)
		}
	}
	whole := NewRouter(nil, "whole")
	whole.Feed(stream)
	if dump(r) != dump(whole) || r.Stats().Messages != uint64(len(msgs)) {
		t.Fatal("state fed in pieces differs")
	}
}
