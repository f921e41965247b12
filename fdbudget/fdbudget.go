// Package fdbudget counts file descriptors against a fixed budget, so that
// a server stops taking new work before the process runs out of them
// instead of failing work it has already taken.
//
// A holder acquires fds before it opens them and releases them once they
// are closed. Acquire waits until the fds are free. TryAcquire takes them
// only if they are free now, with Config.Spare left over, and nobody
// waits: work that can do without fds (a pipe, when a buffer will do)
// never takes those a waiter needs, nor makes the next Acquire wait.
// Charge counts fds that exist already, even beyond the size.
//
// The budget is reached when an Acquire has to wait. It clears once
// nobody waits and use is below the size by a quarter of it, or by what
// the waiting Acquire asked for if that is more: a budget that hovers at
// its size is reached once, not once per release. Config's hooks hear of
// each transition.
//
// The package knows nothing about what the fds are for. A nil *Budget
// allows everything and counts nothing.
package fdbudget

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrStopped is returned by Acquire when its stop channel is closed.
var ErrStopped = errors.New("fdbudget: stopped waiting")

// Config describes a Budget.
type Config struct {
	// Size is the number of fds the budget allows; below 0 means 0.
	Size int
	// Spare are fds TryAcquire leaves free, for the next Acquire.
	Spare int
	// Reached and Cleared, if set, are called when the budget is reached
	// and when it clears, with the budget's state after the change. They
	// are called with the budget locked, so that they are called in
	// order: they must not call the budget.
	Reached, Cleared func(Stats)
	// Reclaim, if set, is called, without the lock, when an Acquire finds
	// too few fds free, once it counts as waiting: a holder of fds it can
	// do without (idle pipes) releases them. It runs before the budget
	// counts as reached.
	Reclaim func()
}

// Budget is a count of fds in use against a size. It is safe for
// concurrent use.
type Budget struct {
	cfg Config

	mu        sync.Mutex
	used      int
	waiting   int
	wake      chan struct{} // closed by the next release while someone waits; nil otherwise
	reached   bool
	clearAt   int // while reached: in use at or below this, with nobody waiting, clears it
	times     uint64
	overdrawn uint64 // fds released beyond those taken: a caller's bug, clamped
}

// Stats is a snapshot of a Budget.
type Stats struct {
	Size    int // fds the budget allows
	InUse   int // fds acquired or charged and not released; above Size only by Charge
	Waiting int // Acquire calls waiting for fds
	// Reached is set while the budget is spent: an Acquire waited, and
	// use has not fallen enough since to clear it.
	Reached      bool
	TimesReached uint64 // times Reached was set
	// Overdrawn counts fds released beyond those taken; InUse stays at 0
	// for them. Nonzero is a bug in a caller.
	Overdrawn uint64
}

// New returns a budget described by cfg.
func New(cfg Config) *Budget {
	cfg.Size = max(cfg.Size, 0)
	return &Budget{cfg: cfg}
}

// Acquire takes n fds, waiting while fewer than n are free; before it
// waits it asks Config.Reclaim for fds. It returns ctx's error once ctx
// is done, or ErrStopped once stop is closed (a nil stop never closes),
// having taken nothing. It fails at once if n is more than the whole
// budget.
func (b *Budget) Acquire(ctx context.Context, stop <-chan struct{}, n int) error {
	if b == nil || n <= 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.cfg.Size {
		return fmt.Errorf("fdbudget: %d fds asked of a budget of %d", n, b.cfg.Size)
	}
	if b.fitsLocked(n) {
		b.used += n
		return nil
	}
	b.waiting++
	defer func() {
		b.waiting--
		b.noteLocked()
	}()
	if b.cfg.Reclaim != nil {
		b.mu.Unlock()
		b.cfg.Reclaim()
		b.mu.Lock()
	}
	if !b.fitsLocked(n) && !b.reached {
		b.reached = true
		b.clearAt = b.cfg.Size - max(b.cfg.Size/4, n)
		b.times++
		if b.cfg.Reached != nil {
			b.cfg.Reached(b.statsLocked())
		}
	}
	for !b.fitsLocked(n) {
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		wake := b.wake
		b.mu.Unlock()
		var err error
		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-stop:
			err = ErrStopped
		}
		b.mu.Lock()
		if err != nil {
			return err
		}
	}
	b.used += n
	return nil
}

// TryAcquire takes n fds if they are free with Config.Spare left over and
// no Acquire waits, and reports whether it did.
func (b *Budget) TryAcquire(n int) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waiting > 0 || !b.fitsLocked(n+b.cfg.Spare) {
		return false
	}
	b.used += n
	return true
}

// Charge counts n fds that are open already, such as a predecessor's
// connections, whether or not they fit.
func (b *Budget) Charge(n int) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	b.used += n
	b.mu.Unlock()
}

// Release gives back n fds taken by Acquire, TryAcquire or Charge.
func (b *Budget) Release(n int) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.used < 0 {
		b.overdrawn += uint64(-b.used)
		b.used = 0
	}
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	b.noteLocked()
}

// Waiting reports whether an Acquire waits for fds: a holder that keeps
// fds it does not need (a pool of idle pipes) should give them back.
func (b *Budget) Waiting() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiting > 0
}

// Stats returns a snapshot of the budget.
func (b *Budget) Stats() Stats {
	if b == nil {
		return Stats{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statsLocked()
}

func (b *Budget) statsLocked() Stats {
	return Stats{Size: b.cfg.Size, InUse: b.used, Waiting: b.waiting, Reached: b.reached,
		TimesReached: b.times, Overdrawn: b.overdrawn}
}

func (b *Budget) fitsLocked(n int) bool { return b.used+n <= b.cfg.Size }

// noteLocked clears reached once nobody waits and use has fallen to
// clearAt.
func (b *Budget) noteLocked() {
	if !b.reached || b.waiting > 0 || b.used > b.clearAt {
		return
	}
	b.reached = false
	if b.cfg.Cleared != nil {
		b.cfg.Cleared(b.statsLocked())
	}
}

// Sizing is how a budget is sized from the process's fd limit.
type Sizing struct {
	Limit   int // the soft RLIMIT_NOFILE
	Open    int // fds open when sized, less those excluded
	Reserve int // kept out of the budget for fds it does not count
	Size    int // Limit - Open - Reserve, at least 0
}

// FromLimit sizes a budget: the soft RLIMIT_NOFILE, less the fds open
// now and reserve. exclude are fds open now that the caller will Charge
// to the budget; they are not counted twice.
func FromLimit(reserve, exclude int) (Sizing, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return Sizing{}, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	open, err := countOpen()
	if err != nil {
		return Sizing{}, err
	}
	limit := int(min(lim.Cur, 1<<31-1))
	return size(limit, open-exclude, reserve), nil
}

// size is the Sizing of limit fds with open in use and reserve kept.
func size(limit, open, reserve int) Sizing {
	open, reserve = max(open, 0), max(reserve, 0)
	return Sizing{Limit: limit, Open: open, Reserve: reserve, Size: max(limit-open-reserve, 0)}
}

// countOpen counts this process's open fds, less the one the counting
// itself opens.
func countOpen() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("count open fds: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("count open fds: /proc/self/fd: %w", err)
	}
	return len(names) - 1, nil
}
