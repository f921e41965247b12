package splice

import (
	"errors"
	"testing"
)

func TestWatcher(t *testing.T) {
	w, err := NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	a, b := tcpPair(t)
	rc, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fired := make(chan string, 4)

	// Readiness fires the watch once.
	if _, err := w.Watch(rc, func() { fired <- "readable" }); err != nil {
		t.Fatal(err)
	}
	// A marker watch, on a socket with data waiting, fires after anything
	// the watch registered before it could have fired for.
	ma, mb := tcpPair(t)
	ma.Write([]byte("m"))
	mrc, err := mb.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Watch(mrc, func() { fired <- "marker" }); err != nil {
		t.Fatal(err)
	}
	if got := <-fired; got != "marker" {
		t.Fatalf("fired %q before any data", got)
	}
	if w.Parked() != 1 {
		t.Fatalf("parked = %d", w.Parked())
	}
	a.Write([]byte("x"))
	if got := <-fired; got != "readable" {
		t.Fatal(got)
	}
	if w.Parked() != 0 {
		t.Fatalf("parked = %d after firing", w.Parked())
	}

	// Data already waiting fires at once (level-triggered).
	if _, err := w.Watch(rc, func() { fired <- "already readable" }); err != nil {
		t.Fatal(err)
	}
	if got := <-fired; got != "already readable" {
		t.Fatal(got)
	}
	b.Read(make([]byte, 1))

	// Wake fires a waiting watch exactly once.
	key, err := w.Watch(rc, func() { fired <- "woken" })
	if err != nil {
		t.Fatal(err)
	}
	if !w.Wake(key) || w.Wake(key) {
		t.Fatal("Wake should fire once")
	}
	if got := <-fired; got != "woken" {
		t.Fatal(got)
	}

	// Close fires what is still waiting, then refuses new watches.
	if _, err := w.Watch(rc, func() { fired <- "closed" }); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if got := <-fired; got != "closed" {
		t.Fatal(got)
	}
	if _, err := w.Watch(rc, func() {}); !errors.Is(err, ErrWatcherClosed) {
		t.Fatalf("Watch after Close = %v", err)
	}

	// A hang-up fires too.
	w2, _ := NewWatcher()
	defer w2.Close()
	if _, err := w2.Watch(rc, func() { fired <- "hangup" }); err != nil {
		t.Fatal(err)
	}
	a.CloseWrite()
	if got := <-fired; got != "hangup" {
		t.Fatal(got)
	}
	// A closed socket cannot be watched.
	b.Close()
	if _, err := w2.Watch(rc, func() {}); err == nil {
		t.Fatal("watching a closed socket succeeded")
	}
}
