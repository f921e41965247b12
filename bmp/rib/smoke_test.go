package rib

import (
	"io"
	"testing"
)

func TestSmoke(t *testing.T) {
	msgs := genStream(1, 500)
	r := NewRouter(nil, "router test")
	feedAll(r, 4096, msgs...)
	if st := r.Status(); st.State != Keeping {
		t.Fatalf("status %+v", st)
	}
	s, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	replay, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	r2 := NewRouter(nil, "replay")
	r2.Feed(replay)
	if st := r2.Status(); st.State != Keeping {
		t.Fatalf("replay status %+v", st)
	}
	a, b := dump(r), dump(r2)
	if a != b {
		t.Fatalf("differ:\n%.3000s\n----\n%.3000s", a, b)
	}
	t.Logf("stats %+v", r.Stats().Routes)
}
