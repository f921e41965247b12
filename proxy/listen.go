package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
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
// Keepalive is left to the caller (setListenerKeepAlive): accepted
// sockets inherit it from the listening socket.
//
// Errors name the address, for example
// "listen on [::]:5000: bind: address already in use".
func Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	return listen(ctx, addr, true)
}

// ListenSingleStack is Listen, except that "[::]:P" too sets IPV6_V6ONLY
// and accepts IPv6 only, for a caller that has IPv4 served by another
// socket (dockerd starts one proxy per family).
func ListenSingleStack(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	return listen(ctx, addr, false)
}

// ListenPacketSingleStack opens a UDP socket on addr, IPv6-only for an
// IPv6 address as with ListenSingleStack.
func ListenPacketSingleStack(ctx context.Context, addr netip.AddrPort) (net.PacketConn, error) {
	family, lc := listenConfig(addr, false)
	pc, err := lc.ListenPacket(ctx, "udp"+family, addr.String())
	if err != nil {
		return nil, listenError(addr, err)
	}
	return pc, nil
}

func listen(ctx context.Context, addr netip.AddrPort, dualStack bool) (net.Listener, error) {
	family, lc := listenConfig(addr, dualStack)
	ln, err := lc.Listen(ctx, "tcp"+family, addr.String())
	if err != nil {
		return nil, listenError(addr, err)
	}
	return ln, nil
}

// listenConfig returns the address family ("4" or "6") of a socket for
// addr, and a ListenConfig that sets IPV6_V6ONLY as Listen describes.
func listenConfig(addr netip.AddrPort, dualStack bool) (string, net.ListenConfig) {
	family, v6only := "4", -1
	if addr.Addr().Is6() {
		family, v6only = "6", 1
		if dualStack && addr.Addr().IsUnspecified() {
			v6only = 0
		}
	}
	return family, net.ListenConfig{
		// Keepalive is set once on the listening socket, and accepted
		// sockets inherit it from there instead of paying four
		// setsockopt calls each.
		KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				if v6only >= 0 {
					if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); serr != nil {
						serr = fmt.Errorf("setsockopt IPV6_V6ONLY=%d: %w", v6only, serr)
						return
					}
				}
			}); err != nil {
				return err
			}
			return serr
		},
	}
}

// listenError names addr in a listen failure. Go's error repeats the
// address with the network; keep the system call and errno.
func listenError(addr netip.AddrPort, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return fmt.Errorf("listen on %s: %w", addr, err)
}

// setListenerKeepAlive sets ka on ln's socket, for every socket accepted
// from it afterwards to inherit.
func setListenerKeepAlive(ln net.Listener, ka conf.KeepAlive) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil // a test listener without a socket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = setKeepAlive(int(fd), ka) }); err != nil {
		return err
	}
	return serr
}

// setKeepAlive sets TCP keepalive on fd as ka says: off, or on with its
// idle time, interval and probe count (whole seconds).
func setKeepAlive(fd int, ka conf.KeepAlive) error {
	if ka.Disabled {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0); err != nil {
			return fmt.Errorf("setsockopt SO_KEEPALIVE: %w", err)
		}
		return nil
	}
	for _, o := range []struct {
		level, opt, v int
		name          string
	}{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(ka.Idle / time.Second), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(ka.Interval / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count, "TCP_KEEPCNT"},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("setsockopt %s: %w", o.name, err)
		}
	}
	return nil
}
