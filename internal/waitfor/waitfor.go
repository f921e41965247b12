// Package waitfor waits, in a test, for a condition to hold: the way a
// test proves that an event happened without sleeping for a guessed time.
package waitfor

import (
	"testing"
	"time"
)

// DefaultTimeout is how long True waits before it fails the test.
const DefaultTimeout = 10 * time.Second

// maxPoll bounds the pause between two checks of a condition.
const maxPoll = 50 * time.Millisecond

// True calls cond until it returns true, on the test's goroutine (so cond
// may call t.Fatal), and fails t naming what if that takes longer than
// DefaultTimeout.
func True(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, DefaultTimeout, what, cond)
}

// Within is True with its own timeout.
func Within(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPoll)
	}
}
