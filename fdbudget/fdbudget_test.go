package fdbudget

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSize(t *testing.T) {
	for _, tt := range []struct {
		name                 string
		limit, open, reserve int
		want                 int
	}{
		{"room", 1024, 10, 20, 994},
		{"exactly spent", 30, 10, 20, 0},
		{"over", 16, 10, 20, 0},
		{"negative open", 100, -3, 10, 90},
		{"negative reserve", 100, 10, -5, 90},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := size(tt.limit, tt.open, tt.reserve); got.Size != tt.want || got.Limit != tt.limit {
				t.Errorf("size(%d, %d, %d) = %+v, want Size %d", tt.limit, tt.open, tt.reserve, got, tt.want)
			}
		})
	}
}

// TestFromLimit checks the sizing against the process's own limit and
// open fds: opening two more fds makes the budget two smaller, and
// excluding them gives them back.
func TestFromLimit(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	before, err := FromLimit(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if before.Limit != int(lim.Cur) || before.Reserve != 10 || before.Size != before.Limit-before.Open-10 || before.Open < 3 {
		t.Fatalf("FromLimit = %+v, with RLIMIT_NOFILE %d", before, lim.Cur)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	after, err := FromLimit(10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.Open != before.Open+2 || after.Size != before.Size-2 {
		t.Errorf("with a pipe open: %+v, before %+v", after, before)
	}
	excl, err := FromLimit(10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if excl.Size != before.Size {
		t.Errorf("excluding the pipe: %+v, before %+v", excl, before)
	}
}

// TestImmediate runs sequences of the calls that never wait and checks
// what is in use after each.
func TestImmediate(t *testing.T) {
	type op struct {
		call string // "acquire" (free fds only), "try", "charge", "release"
		n    int
		ok   bool // try's result
		use  int  // in use after
	}
	for _, tt := range []struct {
		name  string
		size  int
		spare int
		ops   []op
	}{
		{"fill and empty", 5, 0, []op{
			{"acquire", 3, true, 3}, {"try", 2, true, 5}, {"try", 1, false, 5},
			{"release", 2, true, 3}, {"release", 3, true, 0},
		}},
		{"zero asks nothing", 2, 0, []op{
			{"try", 0, true, 0}, {"acquire", 0, true, 0}, {"charge", 0, true, 0}, {"release", 0, true, 0},
		}},
		{"charge beyond size", 4, 0, []op{
			{"charge", 6, true, 6}, {"try", 1, false, 6}, {"release", 3, true, 3}, {"try", 1, true, 4},
		}},
		{"try more than free", 4, 0, []op{
			{"try", 3, true, 3}, {"try", 2, false, 3}, {"try", 1, true, 4},
		}},
		{"empty budget", 0, 0, []op{
			{"try", 1, false, 0}, {"charge", 2, true, 2}, {"release", 2, true, 0},
		}},
		{"spare left for acquire", 6, 3, []op{
			{"try", 2, true, 2}, {"try", 2, false, 2}, {"try", 1, true, 3}, {"acquire", 3, true, 6},
			{"release", 6, true, 0}, {"try", 4, false, 0}, {"try", 3, true, 3},
		}},
		{"spare beyond size", 2, 3, []op{
			{"try", 1, false, 0}, {"acquire", 2, true, 2},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := New(Config{Size: tt.size, Spare: tt.spare})
			for i, o := range tt.ops {
				ok := true
				switch o.call {
				case "acquire":
					if err := b.Acquire(context.Background(), nil, o.n); err != nil {
						t.Fatalf("op %d: Acquire(%d) = %v", i, o.n, err)
					}
				case "try":
					ok = b.TryAcquire(o.n)
				case "charge":
					b.Charge(o.n)
				case "release":
					b.Release(o.n)
				}
				st := b.Stats()
				if ok != o.ok || st.InUse != o.use || st.Size != tt.size {
					t.Fatalf("op %d: %s(%d) = %v, stats %+v; want %v, %d in use", i, o.call, o.n, ok, st, o.ok, o.use)
				}
			}
		})
	}
}

// TestAcquireTooMany checks that asking for more than the whole budget
// fails at once instead of waiting forever.
func TestAcquireTooMany(t *testing.T) {
	b := New(Config{Size: 2})
	if err := b.Acquire(context.Background(), nil, 3); err == nil {
		t.Fatal("Acquire(3) of a budget of 2 succeeded")
	}
	if st := b.Stats(); st.InUse != 0 || st.Waiting != 0 || st.Reached {
		t.Fatalf("stats %+v", st)
	}
}

// transitions records the hooks' calls, in order.
type transitions struct {
	mu  sync.Mutex
	got []string
}

func (tr *transitions) config(size int) Config {
	return Config{
		Size:    size,
		Reached: func(Stats) { tr.add("reached") },
		Cleared: func(Stats) { tr.add("cleared") },
	}
}

func (tr *transitions) add(s string) {
	tr.mu.Lock()
	tr.got = append(tr.got, s)
	tr.mu.Unlock()
}

func (tr *transitions) list() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.got...)
}

// acquireAsync runs Acquire on its own goroutine and waits until it
// waits, or has returned.
func acquireAsync(t *testing.T, b *Budget, ctx context.Context, stop <-chan struct{}, n int) <-chan error {
	t.Helper()
	before := b.Stats().Waiting
	done := make(chan error, 1)
	go func() { done <- b.Acquire(ctx, stop, n) }()
	waitfor.True(t, "Acquire to wait", func() bool { return b.Stats().Waiting > before || len(done) > 0 })
	return done
}

func result(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire did not return")
		return nil
	}
}

// TestAcquireWaits checks that Acquire waits while the budget is spent,
// that a TryAcquire meanwhile does not take the fds it waits for, and
// that it gets them once they are released.
func TestAcquireWaits(t *testing.T) {
	var tr transitions
	b := New(tr.config(8))
	if !b.TryAcquire(7) {
		t.Fatal("TryAcquire(7) of 8 failed")
	}
	done := acquireAsync(t, b, context.Background(), nil, 3)
	if st := b.Stats(); st.Waiting != 1 || !st.Reached || st.TimesReached != 1 || !b.Waiting() {
		t.Fatalf("stats while waiting %+v", st)
	}
	if b.TryAcquire(1) {
		t.Fatal("TryAcquire took an fd while an Acquire waits")
	}
	b.Release(1) // 6 in use: 2 free, still too few
	b.Release(1) // 5 in use: 3 free
	if err := result(t, done); err != nil {
		t.Fatal(err)
	}
	// 8 in use: reached until use falls by the 3 asked for (more than a
	// quarter of 8), to 5.
	if st := b.Stats(); st.InUse != 8 || st.Waiting != 0 || !st.Reached {
		t.Fatalf("stats after the wait %+v", st)
	}
	b.Release(2)
	if got := tr.list(); len(got) != 1 {
		t.Fatalf("at 6 of 8: transitions %v", got)
	}
	b.Release(1)
	if st, got := b.Stats(), tr.list(); st.Reached || st.InUse != 5 || len(got) != 2 || got[0] != "reached" || got[1] != "cleared" {
		t.Fatalf("at 5 of 8: stats %+v, transitions %v", st, got)
	}
	b.Release(5)
}

// TestReachedOnce hovers at the budget's size: an Acquire waits, a
// release lets it through, and again. The budget is reached once and
// clears once, when use falls.
func TestReachedOnce(t *testing.T) {
	var tr transitions
	b := New(tr.config(10))
	b.Charge(10)
	for i := 0; i < 20; i++ {
		done := acquireAsync(t, b, context.Background(), nil, 1)
		b.Release(1)
		if err := result(t, done); err != nil {
			t.Fatal(err)
		}
	}
	if got := tr.list(); len(got) != 1 || got[0] != "reached" {
		t.Fatalf("transitions while hovering: %v", got)
	}
	b.Release(10)
	if st, got := b.Stats(), tr.list(); len(got) != 2 || got[1] != "cleared" || st.TimesReached != 1 || st.InUse != 0 {
		t.Fatalf("stats %+v, transitions %v after the fall", st, got)
	}
}

// TestAcquireStops checks that a waiting Acquire ends on its context and
// on its stop channel, takes nothing, and that the budget then clears if
// it may.
func TestAcquireStops(t *testing.T) {
	for _, tt := range []struct {
		name string
		end  func(cancel context.CancelFunc, stop chan struct{})
		want error
	}{
		{"context", func(cancel context.CancelFunc, _ chan struct{}) { cancel() }, context.Canceled},
		{"stop", func(_ context.CancelFunc, stop chan struct{}) { close(stop) }, ErrStopped},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tr transitions
			b := New(tr.config(4))
			b.Charge(4)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stop := make(chan struct{})
			done := acquireAsync(t, b, ctx, stop, 2)
			tt.end(cancel, stop)
			if err := result(t, done); !errors.Is(err, tt.want) {
				t.Fatalf("Acquire = %v, want %v", err, tt.want)
			}
			if st := b.Stats(); st.InUse != 4 || st.Waiting != 0 || !st.Reached {
				t.Fatalf("stats %+v after the wait ended", st)
			}
			b.Release(1) // 3 of 4: not yet
			if st := b.Stats(); !st.Reached {
				t.Fatalf("cleared at %+v", st)
			}
			b.Release(1) // 2 of 4: down by the 2 asked for, nobody waits
			if st, got := b.Stats(), tr.list(); st.Reached || len(got) != 2 {
				t.Fatalf("stats %+v, transitions %v", st, got)
			}
			b.Release(2)
		})
	}
}

// TestReclaim checks that an Acquire that finds too few fds asks Reclaim
// first, counting as waiting meanwhile, and that fds it reclaims spare
// the wait and the reached transition.
func TestReclaim(t *testing.T) {
	var tr transitions
	var b *Budget
	idle := 2 // fds held by someone who can do without them
	calls := 0
	cfg := tr.config(4)
	cfg.Reclaim = func() {
		calls++
		if !b.Waiting() {
			t.Error("Reclaim called before the Acquire counts as waiting")
		}
		if b.TryAcquire(1) {
			t.Error("TryAcquire succeeded during Reclaim")
		}
		b.Release(idle)
		idle = 0
	}
	b = New(cfg)
	b.Charge(4) // 2 in use, 2 idle
	if err := b.Acquire(context.Background(), nil, 2); err != nil {
		t.Fatal(err)
	}
	if st, got := b.Stats(), tr.list(); calls != 1 || st.InUse != 4 || st.Reached || len(got) != 0 {
		t.Fatalf("%d Reclaim calls, stats %+v, transitions %v", calls, st, got)
	}
	if err := b.Acquire(context.Background(), nil, 0); err != nil || calls != 1 {
		t.Fatalf("Acquire(0) = %v, %d Reclaim calls", err, calls)
	}
	b.Release(4)
	if err := b.Acquire(context.Background(), nil, 3); err != nil || calls != 1 {
		t.Fatalf("Acquire with fds free = %v, %d Reclaim calls", err, calls)
	}
	b.Release(3)
}

// TestNil checks that a nil budget allows everything.
func TestNil(t *testing.T) {
	var b *Budget
	if err := b.Acquire(context.Background(), nil, 5); err != nil || !b.TryAcquire(5) || b.Waiting() {
		t.Fatal("a nil budget refused")
	}
	b.Charge(1)
	b.Release(1)
	if st := b.Stats(); st != (Stats{}) {
		t.Fatalf("stats %+v", st)
	}
}

// TestOverdrawn checks that releasing more than was taken is counted and
// does not make room that is not there.
func TestOverdrawn(t *testing.T) {
	b := New(Config{Size: 2})
	b.Charge(1)
	b.Release(3)
	if st := b.Stats(); st.InUse != 0 || st.Overdrawn != 2 {
		t.Fatalf("stats %+v", st)
	}
	if !b.TryAcquire(2) || b.TryAcquire(1) {
		t.Fatal("an overdrawn budget grew")
	}
}

// TestConcurrent has waiting and non-waiting holders race for a small
// budget: use never exceeds the size, and everything comes back.
func TestConcurrent(t *testing.T) {
	const size, workers, rounds = 7, 8, 300
	b := New(Config{Size: size})
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				n := 1 + (w+i)%3
				if w%2 == 0 {
					if err := b.Acquire(context.Background(), nil, n); err != nil {
						errs <- err.Error()
						return
					}
				} else if !b.TryAcquire(n) {
					continue
				}
				if st := b.Stats(); st.InUse > size {
					errs <- "over the size"
					return
				}
				b.Release(n)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if st := b.Stats(); st.InUse != 0 || st.Waiting != 0 || st.Overdrawn != 0 {
		t.Fatalf("stats %+v at the end", st)
	}
}
