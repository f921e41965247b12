package splice

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"golang.org/x/sys/unix"
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
					waitfor.True(t, "Copy to park", func() bool { return parkedIn("fill") })
					send()
				} else {
					send()
					waitfor.True(t, "the data and the FIN to arrive", func() bool { return finReceived(t, r.in) })
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

// parkedIn reports whether a goroutine waits in the poller inside
// (*direction).fn: "fill" found nothing to read, "drain" no room to write.
func parkedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, " [IO wait") && strings.Contains(g, "splice.(*direction)."+fn+"(") {
			return true
		}
	}
	return false
}

// finReceived reports whether c has received its peer's FIN (CLOSE_WAIT),
// and so every byte sent before it.
func finReceived(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fdOf(t, c), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return info.State == unix.BPF_TCP_CLOSE_WAIT
}
