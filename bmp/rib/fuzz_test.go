package rib

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzRouter: arbitrary bytes, fed in two pieces, never panic; whatever
// the Router keeps, its replay fed to a new Router gives the same state.
func FuzzRouter(f *testing.F) {
	for seed := range uint64(3) {
		f.Add(cat(genStream(seed, 4)...), uint16(100))
	}
	gen := genStream(9, 3)
	f.Add(cat(gen[:12]...), uint16(7))
	f.Add(cat(initiation("r1"), peerUp(hdrV4, allMP, allMP),
		rm(hdrV4, update(pfx("10.0.0.0/8"), cat(attrsA, nhA), pfx("10.0.0.0/8"))),
		rm(hdrV4.with(flagL), update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(label(100, true), nil, "10.0.0.0/8")), attrsA), nil)),
		peerDown(hdrV4.with(flagL))), uint16(3))
	f.Add(cat(peerUp(hdrAP, [][]byte{capAP(apEntry{1, 1, 3}), capML(1, 4, 2)}, [][]byte{capAP(apEntry{1, 1, 3})}),
		rm(hdrAP, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(cat(label(16, false), label(17, true)), nil, "10.0.0.0/8")), attrsA), nil))), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		mem := NewMemory(64 << 20)
		r := NewRouter(mem, "fuzz")
		c := int(cut) % (len(data) + 1)
		r.Feed(data[:c])
		r.Feed(data[c:])
		checkReplay(t, r, mem)
	})
}

// fuzzPeers are the peers FuzzUpdates sends UPDATEs for: plain, ADD-PATH
// both ways with Multiple Labels, Adj-RIB-Out, Loc-RIB with ADD-PATH, and
// extended messages.
func fuzzPrelude() ([]byte, []peerHdr) {
	ap := append(append([][]byte{}, allMP...),
		capAP(apEntry{1, 1, 3}, apEntry{2, 1, 3}, apEntry{1, 4, 3}, apEntry{2, 4, 3}, apEntry{1, 128, 3}, apEntry{2, 128, 3}),
		capML(1, 4, 3), capML(2, 128, 2))
	ext := append(append([][]byte{}, allMP...), capExt())
	return cat(initiation("fuzz"),
		peerUp(hdrV4, allMP, allMP),
		peerUp(hdrAP, ap, ap),
		peerUp(hdrOut, ap, allMP),
		peerUp(hdrLocRIB, ap, ap),
		peerUp(hdrExt, ext, ext)), []peerHdr{hdrV4, hdrAP, hdrOut, hdrLocRIB, hdrExt}
}

// FuzzUpdates wraps arbitrary UPDATE bodies in valid Route Monitoring
// messages of known peers, so that the fuzzer explores UPDATE, attribute
// and NLRI parsing. Each record of data is a selector byte (peer, view
// flags, Peer Down) and a 2-byte length, then the UPDATE body.
func FuzzUpdates(f *testing.F) {
	body := func(u []byte) []byte { return u[bgpHdrLen:] }
	rec := func(sel byte, b []byte) []byte { return cat([]byte{sel}, u16(len(b)), b) }
	f.Add(cat(
		rec(0, body(update(pfx("10.0.0.0/8"), cat(attrsA, nhA), cat(pfx("10.0.0.0/8"), pfx("10.1.0.0/16"))))),
		rec(1, body(update(nil, cat(attrsA, nhA), cat(pfxID(1, "10.0.0.0/8"), pfxID(2, "10.0.0.0/8"))))),
		rec(1, body(update(nil, cat(mpReach(1, 4, "198.51.100.9", append(u32(5), lpfx(cat(label(16, false), label(17, true)), nil, "10.0.0.0/8")...)), attrsA), nil))),
		rec(1|0x10, body(update(nil, cat(mpReach(2, 128, "0.0.0.0,0.0.0.0,2001:db8::1", append(u32(3), lpfx(label(16, true), rd(1, 2), "2001:db8::/32")...)), attrsA), nil))),
		rec(2|0x20, body(update(nil, cat(mpReach(2, 1, "2001:db8::1", pfx("2001:db8::/32")), attrsB), nil))),
		rec(3, body(update(nil, cat(mpReach(2, 1, "2001:db8::1", pfxID(9, "2001:db8::/32")), attrsB), nil))),
		rec(4, body(update(nil, mpUnreach(2, 1, pfx("2001:db8::/32")), nil))),
		rec(0x80, nil),
		rec(0, body(update(nil, nil, nil))),
	))
	f.Fuzz(func(t *testing.T, data []byte) {
		stream, peers := fuzzPrelude()
		for len(data) >= 3 {
			sel := data[0]
			n := min(int(binary.BigEndian.Uint16(data[1:3])), len(data)-3)
			b := data[3 : 3+n]
			data = data[3+n:]
			h := peers[int(sel&0x0f)%len(peers)]
			switch {
			case sel&0x80 != 0 && sel&0x40 != 0:
				stream = append(stream, peerUp(h, allMP, allMP)...)
			case sel&0x80 != 0:
				stream = append(stream, peerDown(h)...)
			default:
				if h.typ != peerLocRIB {
					h.flags |= sel & (flagL | flagO)
				}
				stream = append(stream, rm(h, bgpMsg(bgpUpdate, b))...)
			}
		}
		mem := NewMemory(64 << 20)
		r := NewRouter(mem, "fuzz")
		r.Feed(stream)
		checkReplay(t, r, mem)
	})
}

// checkReplay checks a Router after arbitrary input: stopped with nothing
// held, or keeping a state whose replay gives the same state.
func checkReplay(t *testing.T, r *Router, mem *Memory) {
	t.Helper()
	st := r.Status()
	if st.State != Keeping {
		if st.Err == nil || r.Stats().Routes != 0 {
			t.Fatalf("status %+v with %d routes", st, r.Stats().Routes)
		}
		if r.Stats().Bytes != 0 || mem.Used() != 0 {
			t.Fatalf("holds %d bytes after stopping", mem.Used())
		}
		return
	}
	if r.Stats().Bytes != mem.Used() {
		t.Fatalf("stats say %d bytes, memory %d", r.Stats().Bytes, mem.Used())
	}
	s, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	replay, err := io.ReadAll(s)
	s.Close()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	r2 := NewRouter(nil, "replay")
	r2.Feed(replay)
	if st2 := r2.Status(); st2.State != Keeping || len(r2.Pending()) != 0 {
		t.Fatalf("replay not kept: %v, %d bytes pending", st2.Err, len(r2.Pending()))
	}
	if a, b := dump(r), dump(r2); a != b {
		t.Fatalf("replayed state differs:\n%s\n----\n%s", a, b)
	}
	if _, err := r.Snapshot(); errors.Is(err, ErrSnapshotOpen) {
		t.Fatal("closed snapshot still open")
	}
}
