package rib_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
)

// The state cache checked against the independent parser of
// internal/bmpcheck (issue 17, "An independent state check"): a collector
// that reads a snapshot's replay, then the live stream from the message
// boundary of the snapshot, holds what a collector that read the router's
// stream from its first byte holds.

// crossConfigs are the generated streams. Every one has the seven peers of
// bmpcheck.Generate: ADD-PATH by direction, extended messages, VPNv4/VPNv6,
// labeled unicast, Loc-RIB, Adj-RIB-Out, a legacy 2-byte AS_PATH peer, an
// RD-instance peer up late, churn and a Peer Down; they differ in seed,
// size, attribute sharing, churn and how they end.
func crossConfigs() []bmpcheck.GenConfig {
	return []bmpcheck.GenConfig{
		{Seed: 1, Prefixes: 1, AttrSets: 1, Churn: 1},
		{Seed: 2, Prefixes: 30, AttrSets: 3, Churn: 20},
		{Seed: 3, Prefixes: 120, AttrSets: 6},
		{Seed: 4, Prefixes: 150, AttrSets: 20, Churn: 60, Terminate: true},
		{Seed: 5, Prefixes: 600, AttrSets: 2}, // UPDATEs past 4096 bytes on the extended-message peers
		{Seed: 6, Prefixes: 60, AttrSets: 5, EVPN: true},
		{Seed: 7, Prefixes: 60, AttrSets: 5, Malformed: true},
	}
}

// cuts are the message boundaries a stream of n messages is cut at: all of
// them for a short stream, else the first ten (Initiation and Peer Ups),
// about 12 spread over the rest, and the last few.
func cuts(n int) []int {
	if n <= 160 {
		out := make([]int, n+1)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	for k := 10; k < n-3; k += n / 12 {
		out = append(out, k)
	}
	return append(out, n-3, n-2, n-1, n)
}

// longest is the length of the longest message of stream.
func longest(stream []byte) int {
	n := 0
	for len(stream) >= 6 {
		l := int(stream[1])<<24 | int(stream[2])<<16 | int(stream[3])<<8 | int(stream[4])
		n, stream = max(n, l), stream[l:]
	}
	return n
}

// feed gives r the stream in pieces of odd sizes, so that messages are cut
// across Feeds.
func feed(r *rib.Router, b []byte) {
	for step := 1; len(b) > 0; step = step*7%1009 + 1 {
		n := min(step, len(b))
		r.Feed(b[:n])
		b = b[n:]
	}
}

// replay reads a whole snapshot and closes it.
func replay(t testing.TB, s *rib.Snapshot) []byte {
	t.Helper()
	defer s.Close()
	b, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	return b
}

// untermed is s without its Termination: a replay holds the state before
// it.
func untermed(s *bmpcheck.State) *bmpcheck.State {
	c := *s
	c.Terminated, c.Termination = false, nil
	return &c
}

func mustEqual(t testing.TB, what string, want, got *bmpcheck.State) {
	t.Helper()
	if !want.Equal(got) {
		t.Fatalf("%s: the states differ (want %d peers %d routes, got %d peers %d routes):\n%s",
			what, want.PeerCount(), want.RouteCount(), got.PeerCount(), got.RouteCount(), want.Diff(got))
	}
}

// firstOf is the index of the first message whose note starts with prefix,
// or -1.
func firstOf(msgs []bmpcheck.Message, prefix string) int {
	for i, m := range msgs {
		if strings.HasPrefix(m.Note, prefix) {
			return i
		}
	}
	return -1
}

func TestReplayMatchesIndependentParser(t *testing.T) {
	for _, cfg := range crossConfigs() {
		t.Run(fmt.Sprintf("seed%d-%d", cfg.Seed, cfg.Prefixes), func(t *testing.T) {
			t.Parallel()
			msgs := bmpcheck.Generate(cfg)
			all := bmpcheck.Encode(msgs)
			whole, err := bmpcheck.Parse(all)
			bad := firstOf(msgs, "malformed")
			if (err != nil) != (bad >= 0) {
				t.Fatalf("Parse of the whole stream: %v", err)
			}
			if bad < 0 {
				mustEqual(t, "the generator's state", bmpcheck.Expect(cfg), whole)
			}
			evpn := firstOf(msgs, "evpn")
			term := firstOf(msgs, "termination")
			longestReplay := 0
			for _, k := range cuts(len(msgs)) {
				R := crossCut(t, msgs, k, whole, cutWant{bad: bad, evpn: evpn, term: term})
				longestReplay = max(longestReplay, longest(R))
			}
			if cfg.Seed == 5 && longestReplay <= 4096+6+42 {
				t.Errorf("the longest replayed message has %d bytes: no extended message", longestReplay)
			}
		})
	}
}

// cutWant is where a generated stream stops being keepable: the index of
// its malformed message, its first EVPN route, its Termination, or -1.
type cutWant struct{ bad, evpn, term int }

// crossCut checks the cut of msgs after k messages and returns the replay.
// whole is the parsed state of the whole stream.
func crossCut(t *testing.T, msgs []bmpcheck.Message, k int, whole *bmpcheck.State, w cutWant) []byte {
	t.Helper()
	head, rest := bmpcheck.Encode(msgs[:k]), bmpcheck.Encode(msgs[k:])
	r := rib.NewRouter(rib.NewMemory(256<<20), "router [2001:db8::1]:40000")
	feed(r, head)
	st := r.Status()
	switch {
	case w.bad >= 0 && k > w.bad:
		if st.State != rib.Failed || !errors.Is(st.Err, rib.ErrMalformed) {
			t.Fatalf("cut %d, past the malformed message %d: status %v (%v), want failed", k, w.bad, st.State, st.Err)
		}
		return nil
	case w.evpn >= 0 && k > w.evpn:
		if st.State != rib.Unkeyable || !errors.Is(st.Err, rib.ErrUnkeyable) {
			t.Fatalf("cut %d, past the EVPN routes of message %d: status %v (%v), want unkeyable", k, w.evpn, st.State, st.Err)
		}
		if _, err := r.Snapshot(); !errors.Is(err, rib.ErrNotKeeping) {
			t.Fatalf("cut %d: Snapshot of an unkeyable state: %v", k, err)
		}
		return nil
	case st.State != rib.Keeping:
		t.Fatalf("cut %d (%s): %v", k, msgs[k-1].Note, st.Err)
	}
	if p := r.Pending(); len(p) != 0 {
		t.Fatalf("cut %d: %d bytes pending at a message boundary", k, len(p))
	}
	want, err := bmpcheck.Parse(head)
	if err != nil {
		t.Fatalf("cut %d: Parse of the head: %v", k, err)
	}
	terminated := w.term >= 0 && k > w.term
	if st.Terminated != terminated {
		t.Fatalf("cut %d: terminated %v, want %v", k, st.Terminated, terminated)
	}
	s, err := r.Snapshot()
	if err != nil {
		t.Fatalf("cut %d: %v", k, err)
	}
	if s.Routes() != want.RouteCount() {
		t.Errorf("cut %d: snapshot of %d routes, the head holds %d", k, s.Routes(), want.RouteCount())
	}
	R := replay(t, s)
	got, err := bmpcheck.Parse(R)
	if err != nil {
		t.Fatalf("cut %d: Parse of the replay: %v", k, err)
	}
	mustEqual(t, fmt.Sprintf("cut %d: the replay", k), untermed(want), got)
	if terminated {
		return R // nothing after the Termination is kept, nor parsed
	}

	// The live stream after the replay: the collector's recording.
	feed(r, rest)
	got, err = bmpcheck.Parse(append(R, rest...))
	if err != nil && w.bad < 0 {
		t.Fatalf("cut %d: Parse of the replay and the rest: %v", k, err)
	}
	if w.bad < 0 {
		mustEqual(t, fmt.Sprintf("cut %d: the replay and the rest", k), whole, got)
	}
	if w.bad >= 0 || w.evpn >= 0 {
		return R
	}
	// The tables merged back after the snapshot replay the whole stream.
	s, err = r.Snapshot()
	if err != nil {
		t.Fatalf("cut %d: after the rest: %v", k, err)
	}
	got, err = bmpcheck.Parse(replay(t, s))
	if err != nil {
		t.Fatalf("cut %d: Parse of the final replay: %v", k, err)
	}
	mustEqual(t, fmt.Sprintf("cut %d: the final replay", k), untermed(whole), got)
	return R
}

// The snapshot read on another goroutine while the rest of the stream is
// fed: the replay is the state at the cut, and the live stream after it
// gives the whole stream's state; after Close the merged tables replay the
// whole stream too.
func TestReplayMatchesIndependentParserConcurrent(t *testing.T) {
	cfg := bmpcheck.GenConfig{Seed: 11, Prefixes: 800, AttrSets: 20, Churn: 300}
	msgs := bmpcheck.Generate(cfg)
	whole, err := bmpcheck.Parse(bmpcheck.Encode(msgs))
	if err != nil {
		t.Fatal(err)
	}
	n := len(msgs)
	for _, k := range []int{1, 9, n / 4, n / 2, 3 * n / 4, n - 1} {
		head, rest := bmpcheck.Encode(msgs[:k]), bmpcheck.Encode(msgs[k:])
		r := rib.NewRouter(rib.NewMemory(256<<20), "router 198.51.100.1:40001")
		feed(r, head)
		s, err := r.Snapshot()
		if err != nil {
			t.Fatalf("cut %d: %v", k, err)
		}
		var R []byte
		var rerr error
		var wg sync.WaitGroup
		wg.Go(func() {
			defer s.Close()
			buf := make([]byte, 1500) // small reads: Feed runs between them
			for {
				m, err := s.Read(buf)
				R = append(R, buf[:m]...)
				if err != nil {
					if err != io.EOF {
						rerr = err
					}
					return
				}
			}
		})
		feed(r, rest)
		wg.Wait()
		if rerr != nil {
			t.Fatalf("cut %d: replay: %v", k, rerr)
		}
		want, err := bmpcheck.Parse(head)
		if err != nil {
			t.Fatal(err)
		}
		got, err := bmpcheck.Parse(R)
		if err != nil {
			t.Fatalf("cut %d: Parse of the replay: %v", k, err)
		}
		mustEqual(t, fmt.Sprintf("cut %d: the replay", k), want, got)
		got, err = bmpcheck.Parse(append(R, rest...))
		if err != nil {
			t.Fatalf("cut %d: Parse of the replay and the rest: %v", k, err)
		}
		mustEqual(t, fmt.Sprintf("cut %d: the replay and the rest", k), whole, got)

		s, err = r.Snapshot()
		if err != nil {
			t.Fatalf("cut %d: after the rest: %v", k, err)
		}
		got, err = bmpcheck.Parse(replay(t, s))
		if err != nil {
			t.Fatalf("cut %d: Parse of the final replay: %v", k, err)
		}
		mustEqual(t, fmt.Sprintf("cut %d: the final replay", k), whole, got)
	}
}

// A snapshot taken within a message: the replay, then the Pending bytes,
// then the rest, is the whole stream's state.
func TestReplayMatchesIndependentParserMidMessage(t *testing.T) {
	cfg := bmpcheck.GenConfig{Seed: 12, Prefixes: 200, AttrSets: 8}
	msgs := bmpcheck.Generate(cfg)
	all := bmpcheck.Encode(msgs)
	whole, err := bmpcheck.Parse(all)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []int{3, 7, len(msgs[0].Bytes) + 50, len(all) / 3, len(all)/2 + 1, len(all) - 1} {
		r := rib.NewRouter(nil, "router 198.51.100.1:40001")
		feed(r, all[:at])
		s, err := r.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		pending := append([]byte(nil), r.Pending()...)
		R := replay(t, s)
		want, err := bmpcheck.Parse(bmpcheck.Whole(all[:at]))
		if err != nil {
			t.Fatal(err)
		}
		if len(bmpcheck.Whole(all[:at]))+len(pending) != at {
			t.Fatalf("byte %d: %d bytes pending after %d whole", at, len(pending), len(bmpcheck.Whole(all[:at])))
		}
		got, err := bmpcheck.Parse(R)
		if err != nil {
			t.Fatalf("byte %d: Parse of the replay: %v", at, err)
		}
		mustEqual(t, fmt.Sprintf("byte %d: the replay", at), want, got)
		got, err = bmpcheck.Parse(append(append(R, pending...), all[at:]...))
		if err != nil {
			t.Fatalf("byte %d: Parse of the replay, the pending bytes and the rest: %v", at, err)
		}
		mustEqual(t, fmt.Sprintf("byte %d: the replay and the rest", at), whole, got)
	}
}
