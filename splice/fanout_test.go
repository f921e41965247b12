package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// fanRig is a source connection and n sink connections: the test writes
// to src, the Fanout reads in and writes outs[i], the test reads peers[i].
type fanRig struct {
	src, in     *net.TCPConn
	outs, peers []*net.TCPConn
}

func newFanRig(t *testing.T, n int) fanRig {
	t.Helper()
	var r fanRig
	r.src, r.in = tcpPair(t)
	for range n {
		out, peer := tcpPair(t)
		r.outs = append(r.outs, out)
		r.peers = append(r.peers, peer)
	}
	return r
}

// sinkResult is what a sink's peer read and how the sink ended.
type sinkResult struct {
	mu   sync.Mutex
	got  []byte
	done chan error // Done's argument
	read chan error // the peer's reader ended (EOF: nil)
}

func newSinkResult() *sinkResult {
	return &sinkResult{done: make(chan error, 1), read: make(chan error, 1)}
}

func (r *sinkResult) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.got...)
}

// readAll reads c into r until EOF or an error.
func (r *sinkResult) readAll(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		r.mu.Lock()
		r.got = append(r.got, buf[:n]...)
		r.mu.Unlock()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			r.read <- err
			return
		}
	}
}

func recvErr(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return nil
	}
}

// TestFanoutDelivers: every sink gets every byte in order after its head,
// then the source's FIN, on the splice path (tee) and the copy path; the
// tap sees every byte too.
func TestFanoutDelivers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		disabled bool
		tap      bool
	}{{"tee", false, false}, {"tee with tap", false, true}, {"copy", true, false}, {"copy with tap", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Config{Disabled: tc.disabled})
			defer p.Close()
			var tapped bytes.Buffer
			var tap func([]byte)
			if tc.tap {
				tap = func(b []byte) { tapped.Write(b) }
			}
			fo := p.NewFanout(FanoutConfig{Tap: tap})
			r := newFanRig(t, 3)
			var results []*sinkResult
			for i, out := range r.outs {
				res := newSinkResult()
				results = append(results, res)
				// A limit no sink reaches: this test is about order, not
				// about which of three readers the scheduler favours.
				if _, err := fo.Add(SinkConfig{Conn: out, Limit: 1 << 30, Head: []byte{'H', byte('0' + i)}, Done: func(err error) { res.done <- err }}, nil); err != nil {
					t.Fatal(err)
				}
				go res.readAll(r.peers[i])
			}
			payload := randomBytes(t, 8<<20)
			go func() {
				r.src.Write(payload)
				r.src.CloseWrite()
			}()
			var c Counter
			if err := fo.Copy(r.in, &c); err != nil {
				t.Fatalf("Copy: %v", err)
			}
			for i, res := range results {
				if err := recvErr(t, res.done, "Done"); err != nil {
					t.Errorf("sink %d: Done(%v), want nil", i, err)
				}
				if err := recvErr(t, res.read, "the peer's EOF"); err != nil {
					t.Errorf("sink %d: read: %v", i, err)
				}
				want := append([]byte{'H', byte('0' + i)}, payload...)
				if got := res.bytes(); !bytes.Equal(got, want) {
					t.Errorf("sink %d: %d bytes, want %d, equal %v", i, len(got), len(want), bytes.Equal(got, want))
				}
			}
			if c.Total() != int64(len(payload)) {
				t.Errorf("counted %d, want %d", c.Total(), len(payload))
			}
			if tc.tap && !bytes.Equal(tapped.Bytes(), payload) {
				t.Errorf("tap saw %d bytes, want the %d sent", tapped.Len(), len(payload))
			}
			fo.Close()
			if st := p.Stats(); st.PipesInUse != 0 || st.PipesDirty != 0 {
				t.Errorf("pipes after: %+v", st)
			}
		})
	}
}

// TestFanoutIsolation: a sink whose peer never reads is cut after its
// limit, while the source and the other sink run to the end at the pace
// of the one that reads.
func TestFanoutIsolation(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	fo := p.NewFanout(FanoutConfig{})
	r := newFanRig(t, 2)
	// The stalled sink's limit is small; the healthy one's is not, so
	// that the kernel buffers the stalled one fills first (while it still
	// looks the faster) do not make the healthy one fall behind it.
	limits := []int{64 << 20, 256 << 10}
	var results []*sinkResult
	for i, out := range r.outs {
		res := newSinkResult()
		results = append(results, res)
		if _, err := fo.Add(SinkConfig{Conn: out, Limit: limits[i], Done: func(err error) { res.done <- err }}, nil); err != nil {
			t.Fatal(err)
		}
		if i != 1 { // peer 1 never reads
			go res.readAll(r.peers[i])
		}
	}
	payload := randomBytes(t, 64<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := r.src.Write(payload)
		r.src.CloseWrite()
		wrote <- err
	}()
	if err := fo.Copy(r.in, nil); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if err := recvErr(t, wrote, "the source's write"); err != nil {
		t.Fatal(err)
	}
	err := recvErr(t, results[1].done, "the stalled sink's Done")
	if !errors.Is(err, ErrLagging) || !strings.Contains(err.Error(), "more than its buffer of 262144") && !strings.Contains(err.Error(), "wrote nothing") {
		t.Errorf("stalled sink: Done(%v), want ErrLagging", err)
	}
	for _, i := range []int{0} {
		if err := recvErr(t, results[i].done, "Done"); err != nil {
			t.Errorf("sink %d: Done(%v)", i, err)
		}
		recvErr(t, results[i].read, "EOF")
		if got := results[i].bytes(); !bytes.Equal(got, payload) {
			t.Errorf("sink %d: %d bytes, want %d", i, len(got), len(payload))
		}
	}
	fo.Close()
}

// replayReader gives its bytes in small reads, as a replay does.
type replayReader struct{ b []byte }

func (r *replayReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 7)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// TestFanoutJoin: a sink added mid-stream gets its head, the replay and
// the pending bytes that its At gives, at a round boundary that the tap
// has seen exactly, then the live bytes from that point on.
func TestFanoutJoin(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	var mu sync.Mutex
	var tapped []byte
	fo := p.NewFanout(FanoutConfig{Tap: func(b []byte) {
		mu.Lock()
		tapped = append(tapped, b...)
		mu.Unlock()
	}})
	r := newFanRig(t, 2)
	first := newSinkResult()
	if _, err := fo.Add(SinkConfig{Conn: r.outs[0], Done: func(err error) { first.done <- err }}, nil); err != nil {
		t.Fatal(err)
	}
	go first.readAll(r.peers[0])
	copied := make(chan error, 1)
	go func() { copied <- fo.Copy(r.in, nil) }()

	part1 := randomBytes(t, 1<<20)
	r.src.Write(part1)
	waitfor.True(t, "the first part to be tapped", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(tapped) == len(part1)
	})
	late := newSinkResult()
	var seen int
	if _, err := fo.Add(SinkConfig{Conn: r.outs[1], Head: []byte("HDR"), Done: func(err error) { late.done <- err }},
		func() (io.Reader, []byte, error) {
			mu.Lock()
			seen = len(tapped)
			mu.Unlock()
			return &replayReader{b: []byte("REPLAY")}, []byte("PENDING"), nil
		}); err != nil {
		t.Fatal(err)
	}
	go late.readAll(r.peers[1])
	part2 := randomBytes(t, 1<<20)
	r.src.Write(part2)
	r.src.CloseWrite()
	if err := recvErr(t, copied, "Copy"); err != nil {
		t.Fatal(err)
	}
	recvErr(t, late.done, "the late sink's Done")
	recvErr(t, late.read, "the late sink's EOF")
	if seen != len(part1) {
		t.Fatalf("At saw %d tapped bytes, want %d", seen, len(part1))
	}
	want := append([]byte("HDRREPLAYPENDING"), part2...)
	if got := late.bytes(); !bytes.Equal(got, want) {
		t.Errorf("late sink got %d bytes, want %d (head, replay, pending, then the live bytes)", len(got), len(want))
	}
	recvErr(t, first.read, "EOF")
	if got := first.bytes(); !bytes.Equal(got, append(part1, part2...)) {
		t.Errorf("first sink got %d bytes", len(got))
	}
	fo.Close()
}

// TestFanoutRemoveAndFail: a removed sink and one whose peer resets end
// with their reasons; the others go on.
func TestFanoutRemoveAndFail(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	fo := p.NewFanout(FanoutConfig{})
	r := newFanRig(t, 3)
	var results []*sinkResult
	var sinks []*Sink
	for i, out := range r.outs {
		res := newSinkResult()
		results = append(results, res)
		s, err := fo.Add(SinkConfig{Conn: out, Done: func(err error) { res.done <- err }}, nil)
		if err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, s)
		go res.readAll(r.peers[i])
	}
	copied := make(chan error, 1)
	go func() { copied <- fo.Copy(r.in, nil) }()
	r.src.Write(randomBytes(t, 256<<10))
	sinks[0].Remove()
	if err := recvErr(t, results[0].done, "the removed sink's Done"); !errors.Is(err, ErrRemoved) {
		t.Errorf("removed sink: Done(%v)", err)
	}
	r.peers[1].SetLinger(0)
	r.peers[1].Close() // RST
	payload := randomBytes(t, 4<<20)
	go func() {
		for range 8 {
			r.src.Write(payload)
		}
		r.src.CloseWrite()
	}()
	if err := recvErr(t, results[1].done, "the reset sink's Done"); err == nil || errors.Is(err, ErrLagging) {
		t.Errorf("reset sink: Done(%v), want its write error", err)
	}
	if err := recvErr(t, copied, "Copy"); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, results[2].done, "Done"); err != nil {
		t.Errorf("healthy sink: Done(%v)", err)
	}
	recvErr(t, results[2].read, "EOF")
	if n := len(results[2].bytes()); n != 256<<10+8*4<<20 {
		t.Errorf("healthy sink got %d bytes", n)
	}
	fo.Close()
}

// TestFanoutNudge: a read deadline returns from Copy as a read error that
// the caller can park on, and Copy goes on after it.
func TestFanoutNudge(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	fo := p.NewFanout(FanoutConfig{})
	r := newFanRig(t, 1)
	res := newSinkResult()
	fo.Add(SinkConfig{Conn: r.outs[0], Done: func(err error) { res.done <- err }}, nil)
	go res.readAll(r.peers[0])
	r.in.SetReadDeadline(time.Unix(1, 0))
	err := fo.Copy(r.in, nil)
	var pe *Error
	if !errors.As(err, &pe) || pe.Op != "read" || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Copy = %v, want a read deadline", err)
	}
	if st := p.Stats(); st.PipesInUse != 0 {
		t.Errorf("a nudged Fanout holds %d pipes", st.PipesInUse)
	}
	r.in.SetReadDeadline(time.Time{})
	r.src.Write([]byte("after"))
	r.src.CloseWrite()
	if err := fo.Copy(r.in, nil); err != nil {
		t.Fatal(err)
	}
	recvErr(t, res.read, "EOF")
	if got := string(res.bytes()); got != "after" {
		t.Errorf("got %q", got)
	}
	fo.Close()
}

// TestFanoutStall: a sink that stops reading while it is the only one
// holds the source only for StallAfter; then it is cut, and the source
// runs on.
func TestFanoutStall(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	fo := p.NewFanout(FanoutConfig{StallAfter: 200 * time.Millisecond})
	r := newFanRig(t, 1)
	res := newSinkResult()
	if _, err := fo.Add(SinkConfig{Conn: r.outs[0], Limit: 256 << 10, Done: func(err error) { res.done <- err }}, nil); err != nil {
		t.Fatal(err)
	}
	// peer 0 never reads
	payload := randomBytes(t, 32<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := r.src.Write(payload)
		r.src.CloseWrite()
		wrote <- err
	}()
	if err := fo.Copy(r.in, nil); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if err := recvErr(t, wrote, "the source's write"); err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, res.done, "Done"); !errors.Is(err, ErrLagging) || !strings.Contains(err.Error(), "wrote nothing for 200ms") {
		t.Errorf("Done(%v), want ErrLagging for a stall", err)
	}
	fo.Close()
}

// TestFanoutFreeze: a frozen Fanout's writers stop, one blocked on a
// collector that reads nothing included, and what each sink has left is
// exactly the bytes its collector has not been given: thawed, the same
// Fanout delivers them; handed over, a new Fanout given them as pending
// bytes does, and every collector ends with the whole stream once.
func TestFanoutFreeze(t *testing.T) {
	for _, tc := range []struct {
		name     string
		handover bool
	}{{"thaw", false}, {"handover", true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Config{})
			defer p.Close()
			fo := p.NewFanout(FanoutConfig{})
			r := newFanRig(t, 2)
			var results []*sinkResult
			var sinks []*Sink
			for i, out := range r.outs {
				res := newSinkResult()
				results = append(results, res)
				s, err := fo.Add(SinkConfig{Conn: out, Limit: 64 << 20, Head: []byte{'H', byte('0' + i)}, Done: func(err error) { res.done <- err }}, nil)
				if err != nil {
					t.Fatal(err)
				}
				sinks = append(sinks, s)
			}
			go results[0].readAll(r.peers[0]) // peer 1 reads only after the freeze
			part1, part2 := randomBytes(t, 6<<20), randomBytes(t, 2<<20)
			go r.src.Write(part1)
			var c Counter
			copied := make(chan error, 1)
			go func() { copied <- fo.Copy(r.in, &c) }()
			waitfor.True(t, "the first part to be read", func() bool { return c.Total() == int64(len(part1)) })

			// Freeze as a handover does: the source's read is woken,
			// then the writers.
			r.in.SetReadDeadline(time.Unix(1, 0))
			fo.Nudge()
			if err := recvErr(t, copied, "Copy"); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Copy: %v, want a deadline", err)
			}
			r.in.SetReadDeadline(time.Time{})
			fo.Freeze()
			waitfor.True(t, "every writer to stop", fo.Idle)
			var left [][]byte
			for i, s := range sinks {
				u, err := s.Unwritten()
				if err != nil {
					t.Fatalf("sink %d: Unwritten: %v", i, err)
				}
				left = append(left, u)
			}
			if len(left[1]) == 0 {
				t.Fatalf("the sink whose collector reads nothing has nothing left: the test proves nothing")
			}

			next := fo
			if tc.handover {
				// The successor's Fanout: the same sockets, each sink
				// given what its predecessor had left. The old one is
				// let go of, untouched.
				next = p.NewFanout(FanoutConfig{})
				for i, out := range r.outs {
					res := results[i]
					u := left[i]
					if _, err := next.Add(SinkConfig{Conn: out, Limit: 64 << 20, Done: func(err error) { res.done <- err }},
						func() (io.Reader, []byte, error) { return nil, u, nil }); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				next.Thaw()
			}
			go results[1].readAll(r.peers[1])
			go func() {
				r.src.Write(part2)
				r.src.CloseWrite()
			}()
			if err := next.Copy(r.in, &c); err != nil {
				t.Fatalf("Copy after the freeze: %v", err)
			}
			for i, res := range results {
				if err := recvErr(t, res.done, "Done"); err != nil {
					t.Errorf("sink %d: Done(%v), want nil", i, err)
				}
				recvErr(t, res.read, "the peer's EOF")
				want := append(append([]byte{'H', byte('0' + i)}, part1...), part2...)
				if got := res.bytes(); !bytes.Equal(got, want) {
					t.Errorf("sink %d: %d bytes, want %d: equal %v", i, len(got), len(want), bytes.Equal(got, want))
				}
			}
			next.Close()
			if st := p.Stats(); st.PipesInUse != 0 {
				t.Errorf("pipes after: %+v", st)
			}
		})
	}
}

// TestFanoutPacesBySlowest: a sink whose collector pauses holds the
// source back, within HoldMax, instead of being cut while the other runs
// ahead: once its collector reads again, both get every byte. Past
// HoldMax, with the other sink keeping up, it is demoted and cut at its
// limit: a slow collector holds the router back only for a while.
func TestFanoutPacesBySlowest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		holdMax time.Duration
		cut     bool
	}{{"held", time.Minute, false}, {"demoted", 50 * time.Millisecond, true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Config{})
			defer p.Close()
			fo := p.NewFanout(FanoutConfig{HoldMax: tc.holdMax})
			r := newFanRig(t, 2)
			const limit = 256 << 10
			var results []*sinkResult
			var sinks []*Sink
			for _, out := range r.outs {
				res := newSinkResult()
				results = append(results, res)
				s, err := fo.Add(SinkConfig{Conn: out, Limit: limit, Done: func(err error) { res.done <- err }}, nil)
				if err != nil {
					t.Fatal(err)
				}
				sinks = append(sinks, s)
			}
			go results[0].readAll(r.peers[0]) // peer 1 pauses first
			payload := randomBytes(t, 16<<20)
			go func() {
				r.src.Write(payload)
				r.src.CloseWrite()
			}()
			copied := make(chan error, 1)
			go func() { copied <- fo.Copy(r.in, nil) }()
			if !tc.cut {
				waitfor.True(t, "the source to wait for the paused sink", func() bool {
					fo.mu.Lock()
					defer fo.mu.Unlock()
					s := sinks[1]
					return fo.progress != nil && s.queued+s.qData >= limit/2 && s.err == nil
				})
			}
			var err error
			if tc.cut {
				// Its collector reads nothing until it is cut.
				err = recvErr(t, results[1].done, "the paused sink's Done")
				go results[1].readAll(r.peers[1])
			} else {
				go results[1].readAll(r.peers[1])
			}
			if err := recvErr(t, copied, "Copy"); err != nil {
				t.Fatal(err)
			}
			if !tc.cut {
				err = recvErr(t, results[1].done, "the paused sink's Done")
			}
			if tc.cut != errors.Is(err, ErrLagging) {
				t.Fatalf("paused sink: Done(%v); want cut %v", err, tc.cut)
			}
			for i, res := range results {
				if i == 1 && tc.cut {
					continue
				}
				if i == 0 {
					if err := recvErr(t, res.done, "Done"); err != nil {
						t.Errorf("sink %d: Done(%v)", i, err)
					}
				}
				recvErr(t, res.read, "EOF")
				if got := res.bytes(); !bytes.Equal(got, payload) {
					t.Errorf("sink %d: %d bytes, want %d", i, len(got), len(payload))
				}
			}
			fo.Close()
		})
	}
}
