package splice

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestDataAndFINTogether sends a small message and the FIN back to back,
// while the direction is parked and while it is not yet running. epoll
// may report both as one readiness edge, so a short read is no proof that
// nothing follows: a pump that parks after one without reading on would
// never see the FIN.
func TestDataAndFINTogether(t *testing.T) {
	for _, tt := range []struct {
		name     string
		disabled bool
		parked   bool // start Copy, and let it park, before sending
	}{
		{"splice, parked", false, true},
		{"splice, before Copy", false, false},
		{"copy, parked", true, true},
		{"copy, before Copy", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Config{Disabled: tt.disabled})
			defer p.Close()
			for i := 0; i < 20; i++ {
				r := newRig(t)
				msg := randomBytes(t, 100)
				done := make(chan error, 1)
				send := func() {
					if _, err := r.client.Write(msg); err != nil {
						t.Fatal(err)
					}
					r.client.CloseWrite()
				}
				if tt.parked {
					go func() { done <- p.Copy(r.out, r.in, nil) }()
					time.Sleep(2 * time.Millisecond)
					send()
				} else {
					send()
					time.Sleep(2 * time.Millisecond)
					go func() { done <- p.Copy(r.out, r.in, nil) }()
				}
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("round %d: Copy: %v", i, err)
					}
				case <-time.After(5 * time.Second):
					r.in.Close() // unblock Copy so the test can end
					<-done
					t.Fatalf("round %d: Copy missed the FIN that followed the data", i)
				}
				got, err := io.ReadAll(r.sink)
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("round %d: sink got %d bytes (%v)", i, len(got), err)
				}
			}
		})
	}
}
