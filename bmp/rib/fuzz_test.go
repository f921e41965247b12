package rib

import (
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
	})
}
