// Package socket holds the socket options and listening sockets that the
// proxy, the admin listener, docker mode and the inspector share: dual-stack
// listening, TCP keepalive, and transparent dialing from a client's own
// address. It knows nothing of configuration files or connections.
package socket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

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
// Keepalive is left to the caller (SetListenerKeepAlive): accepted
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
			if v6only < 0 {
				return nil
			}
			return control(c, func(fd int) error {
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
					return fmt.Errorf("setsockopt IPV6_V6ONLY=%d: %w", v6only, err)
				}
				return nil
			})
		},
	}
}

// control runs f on c's descriptor and returns f's error, or Control's.
func control(c syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
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

// KeepAlive is TCP keepalive as a socket option: off, or on with an idle
// time, an interval (both in whole seconds) and a probe count.
type KeepAlive struct {
	Disabled bool
	Idle     time.Duration
	Interval time.Duration
	Count    int
}

// SetKeepAlive sets ka on the socket sc, such as a listening socket, for
// every socket accepted from it afterwards to inherit. A value that is
// not a socket (a test listener) is left alone.
func SetKeepAlive(sc any, ka KeepAlive) error {
	s, ok := sc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return err
	}
	return control(rc, func(fd int) error { return SetKeepAliveFD(fd, ka) })
}

// SetKeepAliveFD sets ka on fd.
func SetKeepAliveFD(fd int, ka KeepAlive) error {
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

// capNetAdmin is CAP_NET_ADMIN's bit: IP_TRANSPARENT and SO_MARK need it.
const capNetAdmin = 12

// HasNetAdmin reports whether the process has CAP_NET_ADMIN in its
// effective set, which TransparentDialer's sockets need.
func HasNetAdmin() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, fmt.Errorf("capget: %w", err)
	}
	return data[0].Effective&(1<<capNetAdmin) != 0, nil
}

// TransparentDialer dials from client's own address and port: the socket
// gets IP_TRANSPARENT (IPV6_TRANSPARENT), so it may bind an address that
// is not local, and SO_MARK, which the return routing set up by
// "bmpproxy transparent-setup" matches. It returns the dialer and the
// network to dial ("tcp4" or "tcp6", the client's family).
func TransparentDialer(client netip.AddrPort, mark uint32) (*net.Dialer, string) {
	network := "tcp4"
	if client.Addr().Is6() {
		network = "tcp6"
	}
	d := &net.Dialer{
		KeepAlive: -1,
		LocalAddr: net.TCPAddrFromAddrPort(client),
		Control: func(_, _ string, c syscall.RawConn) error {
			return control(c, func(fd int) error {
				var err error
				if client.Addr().Is6() {
					err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TRANSPARENT, 1)
				}
				if err != nil {
					return fmt.Errorf("setsockopt IP_TRANSPARENT: %w", err)
				}
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
					return fmt.Errorf("setsockopt SO_MARK: %w", err)
				}
				return nil
			})
		},
	}
	return d, network
}

// AddrPort is a's address and port with an IPv4-mapped address unmapped,
// as every log line and header shows it.
func AddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	if ta, ok := a.(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else if a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
