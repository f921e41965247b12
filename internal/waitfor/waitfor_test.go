package waitfor

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and
// ends the calling goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn with a recorder on a goroutine of its own and returns what
// it failed with, or "" when it returned.
func run(t *testing.T, fn func(testing.TB)) string {
	f := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.msg
}

func TestTrue(t *testing.T) {
	n := 0
	if msg := run(t, func(tb testing.TB) { True(tb, "the third call", func() bool { n++; return n == 3 }) }); msg != "" {
		t.Fatalf("failed: %s", msg)
	}
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

func TestWithinTimesOut(t *testing.T) {
	start := time.Now()
	msg := run(t, func(tb testing.TB) { Within(tb, 20*time.Millisecond, "nothing", func() bool { return false }) })
	if want := "timed out after 20ms waiting for nothing"; msg != want {
		t.Fatalf("failed with %q, want %q", msg, want)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("gave up after %v, before the timeout", d)
	}
	if strings.Contains(run(t, func(tb testing.TB) { Within(tb, 0, "already", func() bool { return true }) }), "timed out") {
		t.Fatal("a condition that holds at once failed with no time to wait")
	}
}
