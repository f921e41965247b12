package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen opens a TCP listener on addr.
//
//   - The IPv6 unspecified address ("[::]:P") is dual-stack: IPV6_V6ONLY is
//     cleared explicitly, whatever net.ipv6.bindv6only says, so one socket
//     accepts IPv4 (as IPv4-mapped addresses) and IPv6.
//   - Any other IPv6 address sets IPV6_V6ONLY and accepts only itself.
//   - An IPv4 address, including 0.0.0.0, opens an AF_INET socket.
//
// Errors name the address, for example
// "listen on [::]:5000: bind: address already in use".
func Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	network, v6only := "tcp4", -1
	if addr.Addr().Is6() {
		network, v6only = "tcp6", 1
		if addr.Addr().IsUnspecified() {
			v6only = 0
		}
	}
	lc := net.ListenConfig{
		Control: func(_, _ string, c syscall.RawConn) error {
			if v6only < 0 {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("setsockopt IPV6_V6ONLY=%d: %w", v6only, serr)
			}
			return nil
		},
	}
	ln, err := lc.Listen(ctx, network, addr.String())
	if err != nil {
		// Go's error repeats the address; keep the system call and errno.
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}
