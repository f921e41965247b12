package socket

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenErrors checks that a listen failure names the address and
// keeps the system call and errno.
func TestListenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().(*net.TCPAddr).AddrPort()
	_, err = Listen(context.Background(), busy)
	want := fmt.Sprintf("listen on %s: bind: address already in use", busy)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

// TestListenV6Only checks IPV6_V6ONLY on each kind of address.
func TestListenV6Only(t *testing.T) {
	tests := []struct {
		addr   string
		family int
		v6only int // -1: not an IPv6 socket
	}{
		{"[::]:0", unix.AF_INET6, 0},
		{"[::1]:0", unix.AF_INET6, 1},
		{"127.0.0.1:0", unix.AF_INET, -1},
		{"0.0.0.0:0", unix.AF_INET, -1},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			ln, err := Listen(context.Background(), netip.MustParseAddrPort(tt.addr))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			rc, _ := ln.(*net.TCPListener).SyscallConn()
			var family, v6only int
			var gerr error
			rc.Control(func(fd uintptr) {
				family, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
				if gerr == nil && family == unix.AF_INET6 {
					v6only, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
				} else {
					v6only = -1
				}
			})
			if gerr != nil {
				t.Fatal(gerr)
			}
			if family != tt.family || v6only != tt.v6only {
				t.Fatalf("family %d v6only %d, want %d %d", family, v6only, tt.family, tt.v6only)
			}
			// An IPv4 client reaches a dual-stack socket, and only that.
			c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port), time.Second)
			reachable := err == nil
			if reachable {
				c.Close()
			}
			wantReachable := tt.v6only == 0 || tt.family == unix.AF_INET
			if reachable != wantReachable {
				t.Fatalf("IPv4 client reachable = %v, want %v", reachable, wantReachable)
			}
		})
	}
}
