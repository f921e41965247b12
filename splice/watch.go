package splice

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Watcher parks idle directions without a goroutine: it holds their source
// sockets in an epoll set of its own and calls back when one becomes
// readable (or hangs up, or fails). A parked direction costs a map entry
// instead of a goroutine and its stack.
//
// Invariants:
//   - Registrations are one-shot and level-triggered: bytes that arrived
//     before Watch fire at once, and each Watch fires at most once.
//   - Every registration fires exactly once: on readiness, on Wake, or at
//     Close. Whoever removes it from the map fires it.
//   - epoll_ctl runs inside RawConn.Control, so the fd cannot be closed and
//     reused for another socket while it is being added or removed. Callers
//     Wake a watch before they close its socket.
type Watcher struct {
	epfd int
	wake int // eventfd that ends the loop

	mu        sync.Mutex
	waiting   map[uint64]*watch
	next      uint64
	closed    bool // no new watches: Close was called or the loop failed
	done      chan struct{}
	closeOnce sync.Once
}

type watch struct {
	rc    syscall.RawConn
	ready func()
}

// ErrWatcherClosed reports a Watch after Close.
var ErrWatcherClosed = errors.New("watcher closed")

// wakeKey is the epoll data of the eventfd.
const wakeKey = 0

// NewWatcher starts a watcher and its goroutine, which ends at Close.
func NewWatcher() (*Watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setKey(&ev, wakeKey)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	w := &Watcher{epfd: epfd, wake: wake, waiting: map[uint64]*watch{}, next: wakeKey + 1, done: make(chan struct{})}
	go w.loop()
	return w, nil
}

func setKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd = int32(key)
	ev.Pad = int32(key >> 32)
}

func getKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Watch calls ready, on the watcher's goroutine, once rc's socket is
// readable, hung up or in error. ready must not block: it should start a
// goroutine. The returned key is for Wake.
func (w *Watcher) Watch(rc syscall.RawConn, ready func()) (uint64, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return 0, ErrWatcherClosed
	}
	key := w.next
	w.next++
	w.waiting[key] = &watch{rc: rc, ready: ready}
	w.mu.Unlock()

	var cerr error
	err := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setKey(&ev, key)
		cerr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		w.mu.Lock()
		delete(w.waiting, key)
		w.mu.Unlock()
		return 0, fmt.Errorf("watch: %w", err)
	}
	return key, nil
}

// Wake fires a watch now if it is still waiting, and reports whether it
// did. Use it before closing the watched socket.
func (w *Watcher) Wake(key uint64) bool {
	w.mu.Lock()
	wt, ok := w.waiting[key]
	delete(w.waiting, key)
	w.mu.Unlock()
	if !ok {
		return false
	}
	w.fire(wt)
	return true
}

// fire removes wt's socket from the epoll set and calls its callback.
func (w *Watcher) fire(wt *watch) {
	wt.rc.Control(func(fd uintptr) {
		unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	wt.ready()
}

// Parked returns the number of watches waiting.
func (w *Watcher) Parked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting)
}

// Close stops the watcher's goroutine and waits for it. Watches still
// waiting are fired, so their owners see their sockets as they are. Close
// is idempotent.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		var one [8]byte
		one[0] = 1
		unix.Write(w.wake, one[:]) // little-endian 1; an eventfd write never blocks here
		<-w.done
		w.mu.Lock()
		rest := w.waiting
		w.waiting = map[uint64]*watch{}
		w.mu.Unlock()
		for _, wt := range rest {
			w.fire(wt)
		}
		unix.Close(w.epfd)
		unix.Close(w.wake)
	})
	return nil
}

// loop waits for events and fires their watches. It is the watcher's only
// goroutine, blocked in epoll_wait (one OS thread) while nothing happens.
func (w *Watcher) loop() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not expected (EBADF, EINVAL). Nothing may stay parked with
			// no one watching: hand every waiting direction back now,
			// and refuse new watches.
			w.mu.Lock()
			w.closed = true
			rest := w.waiting
			w.waiting = map[uint64]*watch{}
			w.mu.Unlock()
			for _, wt := range rest {
				w.fire(wt)
			}
			return
		}
		for i := 0; i < n; i++ {
			key := getKey(&events[i])
			if key == wakeKey {
				return
			}
			w.mu.Lock()
			wt, ok := w.waiting[key]
			delete(w.waiting, key)
			w.mu.Unlock()
			if !ok {
				continue // woken meanwhile
			}
			// One-shot disabled the registration; fire removes it.
			w.fire(wt)
		}
	}
}
