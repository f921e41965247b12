package rib

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	msgs := genStream(3, 2000)
	probe := NewRouter(nil, "probe")
	feedAll(probe, 1<<16, msgs...)
	need := probe.Stats().Bytes

	mem := NewMemory(need / 2)
	r := NewRouter(mem, "router big")
	stream := cat(msgs...)
	feedAll(r, 1<<16, stream)
	st := r.Status()
	if st.State != OverMemory || !errors.Is(st.Err, ErrOverMemory) || !strings.Contains(st.Reason, "limit of") {
		t.Fatalf("status %v reason %q err %v", st.State, st.Reason, st.Err)
	}
	if !strings.HasPrefix(st.Err.Error(), "router big: resync memory limit reached: limit of ") {
		t.Fatalf("error %q", st.Err)
	}
	checkStopped(t, r, len(stream), ErrOverMemory)
}

// TestMemoryShared: the router that pushes the shared budget over its limit
// is the one that stops; the others keep.
func TestMemoryShared(t *testing.T) {
	small := cat(genStream(1, 100)...)
	big := cat(genStream(2, 3000)...)
	probe := NewRouter(nil, "probe")
	probe.Feed(small)
	s := probe.Stats().Bytes

	mem := NewMemory(3 * s)
	a, b := NewRouter(mem, "router a"), NewRouter(mem, "router b")
	a.Feed(small)
	b.Feed(big)
	if a.Status().State != Keeping || b.Status().State != OverMemory {
		t.Fatalf("a %v, b %v", a.Status().State, b.Status().State)
	}
	if mem.Used() != a.Stats().Bytes || a.Stats().Bytes != s {
		t.Fatalf("memory %d, a holds %d, want %d", mem.Used(), a.Stats().Bytes, s)
	}
	c := NewRouter(mem, "router c")
	c.Feed(small)
	if c.Status().State != Keeping || mem.Used() != 2*s {
		t.Fatalf("c %v, memory %d", c.Status().State, mem.Used())
	}
	a.Release()
	c.Release()
	if mem.Used() != 0 {
		t.Fatalf("memory %d after Release", mem.Used())
	}
	if _, err := a.Snapshot(); !errors.Is(err, ErrNotKeeping) {
		t.Fatalf("Snapshot after Release: %v", err)
	}
}

// TestMemoryReturned: withdrawing everything returns the memory of routes
// and attribute sets, with and without a snapshot open meanwhile.
func TestMemoryReturned(t *testing.T) {
	for _, open := range []bool{false, true} {
		msgs := genStream(4, 800)
		mem := NewMemory(0)
		r := NewRouter(mem, "router test")
		feedAll(r, 1<<16, msgs...)
		var s *Snapshot
		if open {
			var err error
			if s, err = r.Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range slices.Clone(r.order) {
			r.Feed(bmpMsgPeerDown(p.key))
		}
		if open {
			s.Close()
			r.Feed(nil)
		}
		st := r.Stats()
		if st.Peers != 0 || st.Routes != 0 || st.Attrs != 0 || r.labels.live != 0 {
			t.Fatalf("open %v: left %+v", open, st)
		}
		if want := int64(len(r.init)) + r.pendCap; st.Bytes != want || mem.Used() != want {
			t.Fatalf("open %v: %d bytes held, memory %d, want %d (the Initiation)", open, st.Bytes, mem.Used(), want)
		}
	}
}

func bmpMsgPeerDown(k pkey) []byte {
	return bmpMsg(2, k[:], make([]byte, 8), []byte{2}, u16(0))
}

// TestMemoryOverWhileSnapshotOpen: a router that goes over the limit while
// a snapshot reads its tables keeps them charged until the snapshot is
// closed, and the snapshot still replays the state it froze.
func TestMemoryOverWhileSnapshotOpen(t *testing.T) {
	msgs := genStream(6, 1000)
	// The limit is the peak the first half needs (a table's growth holds
	// both arrays for a moment).
	pm := NewMemory(0)
	probe := NewRouter(pm, "probe")
	feedAll(probe, 1<<16, msgs[:len(msgs)/2]...)
	mem := NewMemory(pm.Peak())
	r := NewRouter(mem, "router test")
	feedAll(r, 1<<16, msgs[:len(msgs)/2]...)
	want := dump(r)
	s, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	feedAll(r, 1<<16, msgs[len(msgs)/2:]...)
	if r.Status().State != OverMemory {
		t.Fatalf("status %v", r.Status().State)
	}
	if mem.Used() == 0 {
		t.Fatal("memory released while the snapshot reads it")
	}
	replay, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	r.Feed(nil)
	if mem.Used() != 0 {
		t.Fatalf("memory %d after Close", mem.Used())
	}
	r2 := NewRouter(nil, "replay")
	r2.Feed(replay)
	if dump(r2) != want {
		t.Fatal("replay differs from the frozen state")
	}
}
