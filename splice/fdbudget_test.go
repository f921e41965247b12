package splice

import (
	"bytes"
	"context"
	"testing"

	"github.com/bmpproxy/bmpproxy/fdbudget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestPipesUnderFDBudget copies through a pump whose pipes take their fds
// from a budget: a pipe the budget cannot cover is not created and the
// bytes are copied instead; an idle pipe keeps its fds until CloseIdle,
// unless someone waits for fds; a pipe that cannot be made gives its fds
// back.
func TestPipesUnderFDBudget(t *testing.T) {
	for _, tt := range []struct {
		name       string
		size       int
		cfg        Config
		waiter     int // with 2 fds charged elsewhere, an Acquire of this many waits during the copy
		spliced    bool
		idle, used int // pipes idle and fds in use after the copy
	}{
		{name: "no fds for a pipe", size: 1, spliced: false},
		{name: "one pipe", size: 2, spliced: true, idle: 1, used: 2},
		{name: "a waiter comes first", size: 4, waiter: 3, spliced: false},
		{name: "pool bound", size: 2, cfg: Config{MaxIdle: -1}, spliced: true},
		{name: "pipe too small", size: 2, cfg: Config{PipeSize: 64 << 10, MinPipeSize: 128 << 10}, spliced: false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := fdbudget.New(fdbudget.Config{Size: tt.size})
			tt.cfg.FDs = b
			p := New(tt.cfg)
			defer p.Close()
			var waited chan error
			if tt.waiter > 0 {
				b.Charge(2)
				waited = make(chan error, 1)
				go func() { waited <- b.Acquire(context.Background(), nil, tt.waiter) }()
				waitfor.True(t, "the Acquire to wait", b.Waiting)
			}
			payload := randomBytes(t, 1<<20)
			got, c, err := transfer(t, p, newRig(t), payload)
			if err != nil {
				t.Fatalf("Copy: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("sink got %d bytes that differ from the %d sent", len(got), len(payload))
			}
			if spliced := c.Spliced.Load() > 0; spliced != tt.spliced {
				t.Errorf("spliced %d bytes, copied %d; want splicing: %v", c.Spliced.Load(), c.Copied.Load(), tt.spliced)
			}
			if tt.waiter > 0 {
				b.Release(2)
				if err := <-waited; err != nil {
					t.Fatal(err)
				}
				b.Release(tt.waiter)
			}
			st, bs := p.Stats(), b.Stats()
			if st.PipesIdle != tt.idle || st.PipesInUse != 0 || bs.InUse != tt.used {
				t.Errorf("after the copy: pump %+v, budget %+v; want %d idle, %d fds in use", st, bs, tt.idle, tt.used)
			}
			if !tt.spliced && st.Fallbacks == 0 {
				t.Errorf("copied without counting a fallback: %+v", st)
			}
			p.CloseIdle()
			if st, bs := p.Stats(), b.Stats(); st.PipesIdle != 0 || bs.InUse != 0 || bs.Overdrawn != 0 {
				t.Errorf("after CloseIdle: pump %+v, budget %+v", st, bs)
			}
		})
	}
}

// TestPipeNotKeptForWaiter returns a pipe while an Acquire waits for
// fds: the pipe is closed instead of pooled, and the waiter gets its fds.
func TestPipeNotKeptForWaiter(t *testing.T) {
	b := fdbudget.New(fdbudget.Config{Size: 4})
	p := New(Config{FDs: b})
	defer p.Close()
	pp, err := p.getPipe()
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- b.Acquire(context.Background(), nil, 3) }()
	waitfor.True(t, "the Acquire to wait", b.Waiting)
	p.putPipe(pp)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if st, bs := p.Stats(), b.Stats(); st.PipesIdle != 0 || bs.InUse != 3 {
		t.Fatalf("pump %+v, budget %+v", st, bs)
	}
	b.Release(3)
}
