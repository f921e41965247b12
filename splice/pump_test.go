package splice

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- res{c, err}
	}()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}

// rig is client ⇄ [in … out] ⇄ sink, with the pump copying in → out.
type rig struct {
	client, in, out, sink *net.TCPConn
}

func newRig(t testing.TB) rig {
	client, in := tcpPair(t)
	out, sink := tcpPair(t)
	return rig{client: client, in: in, out: out, sink: sink}
}

func fdOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// transfer writes payload into the rig's client, half-closes it, and
// returns what the sink read up to EOF, the direction's counter and Copy's
// result.
func transfer(t *testing.T, p *Pump, r rig, payload []byte) ([]byte, *Counter, error) {
	t.Helper()
	var c Counter
	copyErr := make(chan error, 1)
	go func() { copyErr <- p.Copy(r.out, r.in, &c) }()
	go func() {
		r.client.Write(payload)
		r.client.CloseWrite()
	}()
	got, err := io.ReadAll(r.sink)
	if err != nil {
		t.Fatalf("sink read: %v", err)
	}
	return got, &c, <-copyErr
}

type traceRec struct {
	mu  sync.Mutex
	ops map[Op]map[[2]int]int // op → {src,dst} → bytes
}

func (r *traceRec) record(op Op, src, dst, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ops == nil {
		r.ops = map[Op]map[[2]int]int{}
	}
	if r.ops[op] == nil {
		r.ops[op] = map[[2]int]int{}
	}
	r.ops[op][[2]int{src, dst}] += n
}

func (r *traceRec) bytes(op Op) (total int, pairs map[[2]int]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.ops[op] {
		total += n
	}
	return total, r.ops[op]
}

// TestCopySplices proves that the bytes went through splice(2), from the
// source socket's fd into a pipe and from that pipe into the destination
// socket's fd, and never through a user-space buffer.
func TestCopySplices(t *testing.T) {
	var tr traceRec
	p := New(Config{Trace: tr.record})
	defer p.Close()
	r := newRig(t)
	payload := randomBytes(t, 8<<20)

	got, c, err := transfer(t, p, r, payload)
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("sink got %d bytes that differ from the %d sent", len(got), len(payload))
	}

	inFD, outFD := fdOf(t, r.in), fdOf(t, r.out)
	nIn, pairsIn := tr.bytes(OpSpliceIn)
	nOut, pairsOut := tr.bytes(OpSpliceOut)
	if nIn != len(payload) || nOut != len(payload) {
		t.Fatalf("spliced in %d, out %d; want %d both", nIn, nOut, len(payload))
	}
	for pair := range pairsIn {
		if pair[0] != inFD {
			t.Errorf("splice-in from fd %d, want the source socket fd %d", pair[0], inFD)
		}
	}
	for pair := range pairsOut {
		if pair[1] != outFD {
			t.Errorf("splice-out to fd %d, want the destination socket fd %d", pair[1], outFD)
		}
	}
	if n, _ := tr.bytes(OpRead); n != 0 {
		t.Errorf("%d bytes went through read(2); want none", n)
	}
	if c.Spliced.Load() != int64(len(payload)) || c.Copied.Load() != 0 {
		t.Errorf("counter spliced=%d copied=%d, want %d and 0", c.Spliced.Load(), c.Copied.Load(), len(payload))
	}
	s := p.Stats()
	if s.BytesSpliced != uint64(len(payload)) || s.BytesCopied != 0 || s.Fallbacks != 0 || s.PipesInUse != 0 {
		t.Errorf("stats = %+v", s)
	}
}

// TestCopyFallback forces every way the pump can fail to get a usable pipe
// and checks that the bytes still arrive intact through the copy path.
func TestCopyFallback(t *testing.T) {
	tests := []struct {
		name          string
		cfg           Config
		occupy        int // pipes taken from the pool before the copy
		wantFallbacks bool
	}{
		{name: "disabled", cfg: Config{Disabled: true}},
		{name: "pool exhausted", cfg: Config{MaxPipes: 1}, occupy: 1, wantFallbacks: true},
		// The kernel's default pipe is 64 KiB and F_SETPIPE_SZ is asked
		// for that; demanding 128 KiB mimics pipes shrunk by
		// pipe-user-pages-soft.
		{name: "pipe too small", cfg: Config{PipeSize: 64 << 10, MinPipeSize: 128 << 10}, wantFallbacks: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr traceRec
			tt.cfg.Trace = tr.record
			p := New(tt.cfg)
			defer p.Close()
			for i := 0; i < tt.occupy; i++ {
				pp, err := p.getPipe()
				if err != nil {
					t.Fatal(err)
				}
				defer p.putPipe(pp)
			}
			r := newRig(t)
			payload := randomBytes(t, 4<<20+17)
			got, c, err := transfer(t, p, r, payload)
			if err != nil {
				t.Fatalf("Copy: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("sink got %d bytes that differ from the %d sent", len(got), len(payload))
			}
			if n, _ := tr.bytes(OpSpliceOut); n != 0 {
				t.Errorf("%d bytes spliced; want the copy path only", n)
			}
			if n, _ := tr.bytes(OpWrite); n != len(payload) {
				t.Errorf("%d bytes written through the copy path; want %d", n, len(payload))
			}
			if c.Copied.Load() != int64(len(payload)) {
				t.Errorf("counter copied=%d, want %d", c.Copied.Load(), len(payload))
			}
			s := p.Stats()
			if (s.Fallbacks > 0) != tt.wantFallbacks {
				t.Errorf("fallbacks = %d, want some: %v", s.Fallbacks, tt.wantFallbacks)
			}
			if s.BytesCopied != uint64(len(payload)) {
				t.Errorf("stats copied = %d, want %d", s.BytesCopied, len(payload))
			}
		})
	}
}

// TestIdleHoldsNoPipe checks that a direction parked on an idle source has
// given its pipe back.
func TestIdleHoldsNoPipe(t *testing.T) {
	p := New(Config{})
	defer p.Close()
	r := newRig(t)
	var c Counter
	done := make(chan error, 1)
	go func() { done <- p.Copy(r.out, r.in, &c) }()

	buf := make([]byte, 1<<16)
	for round := 0; round < 3; round++ {
		msg := randomBytes(t, 1000*(round+1))
		if _, err := r.client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r.sink, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatal("payload mismatch")
		}
		waitfor.True(t, "the pipe to return to the pool", func() bool { return p.Stats().PipesInUse == 0 })
		if s := p.Stats(); s.PipesIdle != 1 || s.PipesCreated != 1 {
			t.Fatalf("round %d: stats %+v; want one pipe, idle and reused", round, s)
		}
	}
	r.client.CloseWrite()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestDirtyPipeIsClosed fills a pipe toward a receiver that does not read,
// then resets the receiver: the pipe still holds data, so it must be
// closed and counted, never pooled.
func TestDirtyPipeIsClosed(t *testing.T) {
	p := New(Config{PipeSize: 64 << 10})
	defer p.Close()
	r := newRig(t)
	r.sink.SetReadBuffer(4 << 10)
	r.out.SetWriteBuffer(4 << 10)

	done := make(chan error, 1)
	go func() { done <- p.Copy(r.out, r.in, nil) }()
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		chunk := make([]byte, 64<<10)
		for i := 0; i < 256; i++ { // at most 16 MiB
			select {
			case <-stop:
				return
			default:
			}
			r.client.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := r.client.Write(chunk); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
		}
	}()
	// Stalled: the pipe is held and the sink is not reading.
	waitfor.True(t, "a stalled pipe", func() bool { return p.Stats().PipesInUse == 1 && parkedIn("drain") })
	r.sink.SetLinger(0)
	r.sink.Close() // RST

	err := <-done
	var pe *Error
	if !errors.As(err, &pe) || pe.Op != "write" {
		t.Fatalf("Copy = %v, want a write error", err)
	}
	close(stop)
	<-writerDone
	s := p.Stats()
	if s.PipesDirty != 1 || s.PipesInUse != 0 || s.PipesIdle != 0 {
		t.Fatalf("stats %+v; want the pipe closed as dirty", s)
	}
}

// TestPoolBounds runs more concurrent directions than MaxPipes allows and
// checks the pool never exceeds its bounds, the excess falls back to
// copying, and every byte arrives.
func TestPoolBounds(t *testing.T) {
	const conns = 8
	p := New(Config{MaxPipes: 2, MaxIdle: 1})
	defer p.Close()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		r := newRig(t)
		payload := randomBytes(t, 1<<20+i)
		wg.Add(3)
		go func() {
			defer wg.Done()
			if err := p.Copy(r.out, r.in, nil); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			r.client.Write(payload)
			r.client.CloseWrite()
		}()
		go func() {
			defer wg.Done()
			got, err := io.ReadAll(r.sink)
			if err != nil {
				errs <- err
			} else if !bytes.Equal(got, payload) {
				errs <- errors.New("payload mismatch")
			}
			if s := p.Stats(); s.PipesInUse+s.PipesIdle > 2 || s.PipesIdle > 1 {
				errs <- errors.New("pool over its bounds")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := p.Stats()
	if s.BytesSpliced+s.BytesCopied != conns*(1<<20)+conns*(conns-1)/2 {
		t.Errorf("stats %+v do not add up", s)
	}
	if s.PipesInUse != 0 || s.PipesIdle > 1 {
		t.Errorf("stats %+v after all directions ended", s)
	}
}

func TestNewPipeSize(t *testing.T) {
	pp, err := newPipe(1<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer pp.close()
	if pp.size < 64<<10 {
		t.Fatalf("size %d", pp.size)
	}
	// Above pipe-max-size F_SETPIPE_SZ fails with EPERM (without
	// CAP_SYS_RESOURCE); newPipe asks for less until it succeeds.
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Fatal(err)
	}
	max, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	big, err := newPipe(4*max, 64<<10)
	if err != nil {
		t.Fatalf("newPipe above pipe-max-size: %v", err)
	}
	big.close()
	if big.size < 64<<10 || big.size > 4*max {
		t.Fatalf("size %d", big.size)
	}
	if _, err := newPipe(64<<10, 1<<30); !errors.Is(err, ErrPipeTooSmall) {
		t.Fatalf("newPipe with an impossible minimum = %v, want ErrPipeTooSmall", err)
	}
}
