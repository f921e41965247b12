package proxy

import (
	"context"
	"net"
	"sync"
	"time"
)

// setupWorkers runs connection setups on goroutines that are kept for a
// while after their last setup. Dialing grows a goroutine's stack to a few
// KiB; a fresh goroutine per connection pays for that growth (morestack
// and a stack copy) every time, a kept one pays once.
//
// A setup never waits for a worker: if none is idle, a new one starts.
// Workers end after workerIdle without work, or when stop is closed.
type setupWorkers struct {
	work chan setupJob // unbuffered: a send succeeds only to an idle worker
	stop chan struct{}
	wg   sync.WaitGroup
}

// setupJob is one accepted connection. c is tracked already, so a
// handover that freezes the server between the accept and the setup
// waits for it.
type setupJob struct {
	ctx context.Context
	c   *conn
	nc  net.Conn // the accepted socket
}

// workerIdle is how long a worker waits for another setup before it ends.
const workerIdle = 10 * time.Second

func newSetupWorkers() *setupWorkers {
	return &setupWorkers{work: make(chan setupJob), stop: make(chan struct{})}
}

// run hands job to an idle worker or starts one.
func (w *setupWorkers) run(s *Server, job setupJob) {
	select {
	case w.work <- job:
	default:
		w.wg.Add(1)
		go w.worker(s, job)
	}
}

func (w *setupWorkers) worker(s *Server, job setupJob) {
	defer w.wg.Done()
	s.setup(job)
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		select {
		case job := <-w.work:
			s.setup(job)
			t.Reset(workerIdle)
		case <-t.C:
			return
		case <-w.stop:
			return
		}
	}
}

// close ends the idle workers and waits for all of them; setups in
// progress finish first.
func (w *setupWorkers) close() {
	close(w.stop)
	w.wg.Wait()
}
