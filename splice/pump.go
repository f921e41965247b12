// Package splice moves bytes between two sockets with splice(2) through a
// kernel pipe, so payload never enters user space.
//
// Invariants:
//   - A direction owns at most one pipe, and only while bytes are in flight.
//     When it parks waiting for the source to become readable, its pipe is
//     empty and back in the pool: an idle connection holds no pipe fds.
//   - Only empty pipes return to the pool. A pipe that still holds data when
//     its direction ends is closed and counted as dirty.
//   - The pool is bounded (Config.MaxPipes) and keeps at most
//     Config.MaxIdle unused pipes open. It is not a sync.Pool, which the
//     garbage collector empties.
//   - A pipe whose capacity is below Config.MinPipeSize after F_SETPIPE_SZ
//     is never used. When no usable pipe can be had, the direction copies
//     through a pooled buffer until it next goes idle, then tries again.
//     Each such fallback is counted and logged (rate limited).
//   - With Config.FDs, every open pipe, in use or idle, holds its two fds
//     of that budget. A pipe the budget cannot cover is not created, and
//     while someone waits for fds no pipe is kept idle.
//   - EAGAIN on the pipe-to-socket side means "wait for writability" and
//     never drops the bytes in the pipe. EINTR is retried.
//
// The package knows nothing about proxies or configuration: it takes two
// connections that expose their fds and plain tuning parameters.
package splice

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	DefaultMaxPipes = 1024
	DefaultMaxIdle  = 64
	// DefaultPipeSize is the pipe capacity for a process exempt from
	// pipe-user-pages-soft (16,384 pages per user); others use
	// DefaultPipeSizeBudget, so that four times as many pipes fit.
	DefaultPipeSize       = 1 << 20
	DefaultPipeSizeBudget = 256 << 10
	DefaultMinPipeSize    = 64 << 10
	DefaultBufferSize     = 64 << 10

	// pipeFDs are the descriptors of one pipe.
	pipeFDs = 2

	// createBackoff is how long the pump stops trying to create pipes
	// after a creation failure (EMFILE, a pipe below MinPipeSize). Idle
	// pipes in the pool are still used meanwhile.
	createBackoff = time.Second
	// fallbackLogEvery bounds the fallback warning rate.
	fallbackLogEvery = time.Minute
)

// Conn is one end of a pumped connection. *net.TCPConn and *net.UnixConn
// satisfy it.
type Conn interface {
	syscall.Conn
	// CloseWrite shuts down the writing side, sending FIN on TCP.
	CloseWrite() error
}

// Op names a data-path system call for Config.Trace.
type Op uint8

// The traced operations.
const (
	OpSpliceIn  Op = iota + 1 // splice(socket → pipe)
	OpSpliceOut               // splice(pipe → socket)
	OpRead                    // read(socket) into a buffer, fallback path
	OpWrite                   // write(socket) from a buffer, fallback path
)

func (o Op) String() string {
	switch o {
	case OpSpliceIn:
		return "splice-in"
	case OpSpliceOut:
		return "splice-out"
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Config tunes a Pump. The zero value is usable.
type Config struct {
	// MaxPipes bounds the pipes that exist at once, in use or idle.
	// Zero means DefaultMaxPipes.
	MaxPipes int
	// MaxIdle bounds the unused pipes kept open for reuse. Zero means
	// DefaultMaxIdle; a negative value keeps none.
	MaxIdle int
	// PipeSize is the capacity requested with F_SETPIPE_SZ. Zero means
	// DefaultPipeSize with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, and
	// DefaultPipeSizeBudget without.
	PipeSize int
	// MinPipeSize is the smallest capacity worth splicing through. Zero
	// means DefaultMinPipeSize.
	MinPipeSize int
	// BufferSize is the size of the fallback copy buffers. Zero means
	// DefaultBufferSize.
	BufferSize int
	// Disabled makes every direction copy through a buffer.
	Disabled bool
	// Logger receives fallback warnings. The zero value logs nothing.
	Logger zerolog.Logger
	// FDs, if set, is the budget pipes take their fds from. Nil means
	// pipes are bounded by MaxPipes alone.
	FDs FDBudget
	// Trace, if set, is called after every data-path system call that
	// moved n > 0 bytes from fd src to fd dst. It exists for tests.
	Trace func(op Op, src, dst, n int)
}

// FDBudget is the fd accounting a Pump creates pipes under.
// *fdbudget.Budget satisfies it.
type FDBudget interface {
	// TryAcquire takes n fds if they are free, without waiting.
	TryAcquire(n int) bool
	// Release gives back n fds.
	Release(n int)
	// Waiting reports whether someone waits for fds.
	Waiting() bool
}

// Stats is a snapshot of a Pump's counters.
type Stats struct {
	BytesSpliced uint64 // bytes moved pipe → socket
	BytesCopied  uint64 // bytes moved through user-space buffers
	PipesInUse   int    // pipes held by a direction right now
	PipesIdle    int    // pipes open in the pool, unused
	PipesCreated uint64 // pipes ever created
	PipesDirty   uint64 // pipes closed while holding data
	Fallbacks    uint64 // times a direction copied because no pipe was available
}

// Counter accumulates the bytes one direction has delivered.
type Counter struct {
	Spliced atomic.Int64
	Copied  atomic.Int64
}

// Total returns the bytes delivered by either path.
func (c *Counter) Total() int64 { return c.Spliced.Load() + c.Copied.Load() }

// Error is a failed read from the source or write to the destination.
type Error struct {
	Op  string // "read" (the source side) or "write" (the destination side)
	Err error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrPoolExhausted reports that MaxPipes pipes are already in use.
var ErrPoolExhausted = errors.New("pipe pool exhausted")

// ErrFDBudget reports that Config.FDs has no fds for another pipe.
var ErrFDBudget = errors.New("fd budget spent")

// errCreateBackoff reports that pipe creation failed recently and is not
// retried yet.
var errCreateBackoff = errors.New("pipe creation backing off after a failure")

// Pump moves bytes between connections. It is safe for concurrent use; one
// Pump serves every connection of a process.
type Pump struct {
	cfg  Config
	bufs sync.Pool // *[]byte of cfg.BufferSize; bounded by the number of active directions

	mu          sync.Mutex
	idle        []*pipe // empty pipes; len(idle) <= cfg.MaxIdle
	open        int     // pipes that exist: in use + idle; open <= cfg.MaxPipes
	closed      bool    // Close was called: returned pipes are closed, not pooled
	createAfter time.Time

	spliced   atomic.Uint64
	copied    atomic.Uint64
	created   atomic.Uint64
	dirty     atomic.Uint64
	fallbacks atomic.Uint64
	// null is /dev/null, where a Fanout drops a round every sink has; it
	// is opened at the first such round and kept open.
	nullOnce sync.Once
	null     int
	nullErr  error

	// lastWarn is the UnixNano time of the last fallback warning.
	lastWarn       atomic.Int64
	unwarnedFallbk atomic.Uint64
}

// New returns a Pump with cfg's zero fields set to their defaults.
func New(cfg Config) *Pump {
	if cfg.MaxPipes == 0 {
		cfg.MaxPipes = DefaultMaxPipes
	}
	if cfg.MaxIdle == 0 {
		cfg.MaxIdle = DefaultMaxIdle
	}
	if cfg.MaxIdle < 0 {
		cfg.MaxIdle = 0
	}
	if cfg.PipeSize == 0 {
		cfg.PipeSize = DefaultPipeSizeBudget
		if pipeBudgetExempt() {
			cfg.PipeSize = DefaultPipeSize
		}
	}
	if cfg.MinPipeSize == 0 {
		cfg.MinPipeSize = DefaultMinPipeSize
	}
	if cfg.BufferSize == 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	p := &Pump{cfg: cfg}
	p.bufs.New = func() any {
		b := make([]byte, cfg.BufferSize)
		return &b
	}
	return p
}

// Stats returns a snapshot of the counters.
func (p *Pump) Stats() Stats {
	p.mu.Lock()
	idle, open := len(p.idle), p.open
	p.mu.Unlock()
	return Stats{
		BytesSpliced: p.spliced.Load(),
		BytesCopied:  p.copied.Load(),
		PipesInUse:   open - idle,
		PipesIdle:    idle,
		PipesCreated: p.created.Load(),
		PipesDirty:   p.dirty.Load(),
		Fallbacks:    p.fallbacks.Load(),
	}
}

// Close closes the idle pipes. Pipes in use are closed when their
// directions return them; Close does not wait for that. The Pump keeps
// working after Close, without pooling.
func (p *Pump) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.CloseIdle()
	return nil
}

// CloseIdle closes the idle pipes, giving their fds back to Config.FDs,
// and returns how many it closed. Pooling goes on.
func (p *Pump) CloseIdle() int {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.mu.Unlock()
	for _, pp := range idle {
		p.closePipe(pp)
	}
	return len(idle)
}

// closePipe closes pp, which the pool no longer counts, and gives its fds
// back.
func (p *Pump) closePipe(pp *pipe) {
	pp.close()
	if p.cfg.FDs != nil {
		p.cfg.FDs.Release(pipeFDs)
	}
}

// getPipe returns an empty pipe from the pool, creating one if the bound
// and the fd budget allow.
func (p *Pump) getPipe() (*pipe, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		pp := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return pp, nil
	}
	if p.open >= p.cfg.MaxPipes {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %d pipes", ErrPoolExhausted, p.cfg.MaxPipes)
	}
	if now := time.Now(); now.Before(p.createAfter) {
		p.mu.Unlock()
		return nil, errCreateBackoff
	}
	if p.cfg.FDs != nil && !p.cfg.FDs.TryAcquire(pipeFDs) {
		p.mu.Unlock()
		return nil, ErrFDBudget
	}
	p.open++
	p.mu.Unlock()

	pp, err := newPipe(p.cfg.PipeSize, p.cfg.MinPipeSize)
	if err != nil {
		p.mu.Lock()
		p.open--
		p.createAfter = time.Now().Add(createBackoff)
		p.mu.Unlock()
		if p.cfg.FDs != nil {
			p.cfg.FDs.Release(pipeFDs)
		}
		return nil, err
	}
	p.created.Add(1)
	return pp, nil
}

// putPipe returns pp to the pool if it is empty, the pool has room and
// nobody waits for fds, and closes it otherwise.
func (p *Pump) putPipe(pp *pipe) {
	if pp.data != 0 {
		p.dirty.Add(1)
		p.mu.Lock()
		p.open--
		p.mu.Unlock()
		p.closePipe(pp)
		return
	}
	p.mu.Lock()
	if !p.closed && len(p.idle) < p.cfg.MaxIdle && (p.cfg.FDs == nil || !p.cfg.FDs.Waiting()) {
		p.idle = append(p.idle, pp)
		p.mu.Unlock()
		return
	}
	p.open--
	p.mu.Unlock()
	p.closePipe(pp)
}

// noteFallback counts a fallback to copying and warns at most once per
// fallbackLogEvery.
func (p *Pump) noteFallback(reason error) {
	p.fallbacks.Add(1)
	p.unwarnedFallbk.Add(1)
	now := time.Now().UnixNano()
	last := p.lastWarn.Load()
	if last != 0 && now-last < int64(fallbackLogEvery) {
		return
	}
	if !p.lastWarn.CompareAndSwap(last, now) {
		return
	}
	p.cfg.Logger.Warn().
		Err(reason).
		Uint64("fallbacks", p.unwarnedFallbk.Swap(0)).
		Uint64("fallbacks_total", p.fallbacks.Load()).
		Msg("no usable pipe, copying through user space")
}

func (p *Pump) trace(op Op, src, dst, n int) {
	if p.cfg.Trace != nil {
		p.cfg.Trace(op, src, dst, n)
	}
}

// Copy moves bytes from src to dst until src reaches EOF, then shuts down
// dst's write side (half-close) and returns nil. Delivered bytes are added
// to c, which may be nil, as they are written. Any other outcome returns an
// *Error saying which side failed; the caller decides whether to close the
// connections.
//
// Copy holds no pipe and no buffer while src has nothing to read.
func (p *Pump) Copy(dst, src Conn, c *Counter) error {
	if c == nil {
		c = new(Counter)
	}
	sr, err := src.SyscallConn()
	if err != nil {
		return &Error{Op: "read", Err: err}
	}
	dr, err := dst.SyscallConn()
	if err != nil {
		return &Error{Op: "write", Err: err}
	}
	d := &direction{pump: p, src: sr, dst: dr, count: c}
	// The poller callbacks are bound once: a parked direction holds one
	// closure, and moving a message allocates nothing.
	d.fillFn, d.drainFn = d.fillFD, d.drainFD
	defer d.release()
	for {
		n, err := d.fill()
		if err != nil {
			return &Error{Op: "read", Err: err}
		}
		if n == 0 {
			break
		}
		if err := d.drain(); err != nil {
			return &Error{Op: "write", Err: err}
		}
	}
	if err := dst.CloseWrite(); err != nil {
		return &Error{Op: "write", Err: fmt.Errorf("close write: %w", err)}
	}
	return nil
}

// direction is the state of one Copy. Exactly one of pipe and buf is held
// while bytes are in flight; both are nil while idle.
type direction struct {
	pump  *Pump
	src   syscall.RawConn
	dst   syscall.RawConn
	count *Counter

	fillFn, drainFn func(fd uintptr) bool

	pipe     *pipe
	buf      *[]byte
	off, end int // (*buf)[off:end] is read and not yet written

	n     int   // result of the last fillFD
	opErr error // error of the last fillFD or drainFD
}

// acquire takes a pipe, or a buffer when no pipe can be had.
func (d *direction) acquire() {
	if !d.pump.cfg.Disabled {
		pp, err := d.pump.getPipe()
		if err == nil {
			d.pipe = pp
			return
		}
		d.pump.noteFallback(err)
	}
	d.buf = d.pump.bufs.Get().(*[]byte)
}

// release returns what the direction holds. A pipe with data is closed.
func (d *direction) release() {
	if d.pipe != nil {
		d.pump.putPipe(d.pipe)
		d.pipe = nil
	}
	if d.buf != nil {
		d.pump.bufs.Put(d.buf)
		d.buf = nil
		d.off, d.end = 0, 0
	}
}

// fill reads from src into the held pipe or buffer, which is empty on
// entry. It parks in the poller, holding nothing, while src has no data.
// It returns 0 at EOF.
func (d *direction) fill() (int, error) {
	d.n, d.opErr = 0, nil
	if err := d.src.Read(d.fillFn); err != nil {
		return 0, err
	}
	if d.opErr != nil {
		return 0, d.opErr
	}
	if n := d.n; n > 0 {
		rfd := d.fd(d.src)
		if d.pipe != nil {
			d.pipe.data = n
			d.pump.trace(OpSpliceIn, rfd, d.pipe.w, n)
		} else {
			d.off, d.end = 0, n
			d.pump.trace(OpRead, rfd, -1, n)
		}
	}
	return d.n, nil
}

// fillFD is fill's poller callback: false means "park until readable".
func (d *direction) fillFD(fd uintptr) bool {
	if d.pipe == nil && d.buf == nil {
		d.acquire()
	}
	for {
		var n int
		var err error
		if d.pipe != nil {
			var m int64
			m, err = unix.Splice(int(fd), nil, d.pipe.w, nil, d.pipe.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			n = int(m)
		} else {
			n, err = unix.Read(int(fd), *d.buf)
		}
		switch err {
		case nil:
			if n < 0 { // not expected from the kernel; never trust it
				n, err = 0, io.ErrNoProgress
			}
			d.n, d.opErr = n, err
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// Idle: give everything back before parking.
			d.release()
			return false
		default:
			d.opErr = err
			return true
		}
	}
}

// drain writes everything the direction holds to dst, parking in the
// poller while dst is not writable. Bytes in the pipe are never dropped on
// EAGAIN.
func (d *direction) drain() error {
	d.opErr = nil
	if err := d.dst.Write(d.drainFn); err != nil {
		return err
	}
	return d.opErr
}

// drainFD is drain's poller callback: false means "park until writable".
func (d *direction) drainFD(fd uintptr) bool {
	for {
		var n int
		var err error
		if d.pipe != nil {
			if d.pipe.data == 0 {
				return true
			}
			var m int64
			m, err = unix.Splice(d.pipe.r, nil, int(fd), nil, d.pipe.data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			n = int(m)
		} else {
			if d.off == d.end {
				return true
			}
			n, err = unix.Write(int(fd), (*d.buf)[d.off:d.end])
		}
		switch err {
		case nil:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			d.opErr = err
			return true
		}
		if n <= 0 {
			d.opErr = io.ErrNoProgress
			return true
		}
		if d.pipe != nil {
			d.pump.trace(OpSpliceOut, d.pipe.r, int(fd), n)
			d.pipe.data -= n
			d.pump.spliced.Add(uint64(n))
			d.count.Spliced.Add(int64(n))
		} else {
			d.pump.trace(OpWrite, -1, int(fd), n)
			d.off += n
			d.pump.copied.Add(uint64(n))
			d.count.Copied.Add(int64(n))
		}
	}
}

// fd returns the descriptor behind rc, for tracing only.
func (d *direction) fd(rc syscall.RawConn) int {
	if d.pump.cfg.Trace == nil {
		return -1
	}
	fd := -1
	_ = rc.Control(func(s uintptr) { fd = int(s) })
	return fd
}

// devNull returns /dev/null's descriptor, opening it once, or -1 if it
// cannot be opened.
func (p *Pump) devNull() int {
	p.nullOnce.Do(func() {
		p.null, p.nullErr = unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if p.nullErr != nil {
			p.null = -1
		}
	})
	return p.null
}

// Discard reads src until EOF and drops what it reads, adding the bytes
// to c (Copied), and returns nil; a read error returns an *Error with Op
// "read", as Copy does, a read deadline included. It holds a buffer only
// while bytes arrive.
func (p *Pump) Discard(src Conn, c *Counter) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return &Error{Op: "read", Err: err}
	}
	var buf *[]byte
	defer func() {
		if buf != nil {
			p.bufs.Put(buf)
		}
	}()
	for {
		n := 0
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = p.bufs.Get().(*[]byte)
			}
			for {
				m, err := unix.Read(int(fd), *buf)
				switch err {
				case nil:
					n = m
					return true
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					p.bufs.Put(buf) // idle: hold nothing while parked
					buf = nil
					return false
				default:
					rerr = err
					return true
				}
			}
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			return &Error{Op: "read", Err: err}
		}
		if n <= 0 {
			return nil
		}
		if c != nil {
			c.Copied.Add(int64(n))
		}
	}
}
