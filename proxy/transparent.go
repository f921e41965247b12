package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/bmpproxy/bmpproxy/conf"
	"golang.org/x/sys/unix"
)

// capNetAdmin is CAP_NET_ADMIN's bit: IP_TRANSPARENT and SO_MARK need it.
const capNetAdmin = 12

// hasNetAdmin reports whether the process has CAP_NET_ADMIN in its
// effective set.
func hasNetAdmin() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, fmt.Errorf("capget: %w", err)
	}
	return data[0].Effective&(1<<capNetAdmin) != 0, nil
}

// checkTransparent refuses a configuration with a transparent listener
// when the process cannot dial transparently.
func checkTransparent(cfg *conf.Config) error {
	var names []string
	for _, l := range cfg.Listeners {
		if l.ProxyProtocol == conf.ProxyTransparent {
			names = append(names, l.Name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	ok, err := hasNetAdmin()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("listener %q: proxy_protocol transparent needs CAP_NET_ADMIN (for IP_TRANSPARENT and SO_MARK); run as root, or grant it (setcap cap_net_admin+ep, or AmbientCapabilities=CAP_NET_ADMIN)", names[0])
	}
	return nil
}

// transparentDialer dials from client's own address and port: the socket
// gets IP_TRANSPARENT (IPV6_TRANSPARENT), so it may bind an address that
// is not local, and SO_MARK, which the return routing set up by
// "bmpproxy transparent-setup" matches.
func transparentDialer(client netip.AddrPort, mark uint32) (*net.Dialer, string) {
	network := "tcp4"
	if client.Addr().Is6() {
		network = "tcp6"
	}
	d := &net.Dialer{
		KeepAlive: -1,
		LocalAddr: net.TCPAddrFromAddrPort(client),
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if client.Addr().Is6() {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TRANSPARENT, 1)
				}
				if serr != nil {
					serr = fmt.Errorf("setsockopt IP_TRANSPARENT: %w", serr)
					return
				}
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); serr != nil {
					serr = fmt.Errorf("setsockopt SO_MARK: %w", serr)
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	return d, network
}

// errNoReturnRoute explains a transparent dial that timed out.
var errNoReturnRoute = errors.New("the target's replies do not come back to this host: set up the return routing with 'bmpproxy transparent-setup'")

// loopbackFor rewrites a loopback target to the client's family: an
// IPv6 client cannot be dialed from to 127.0.0.1, nor an IPv4 one to ::1,
// and a collector on loopback usually listens on both.
func loopbackFor(target string, client netip.AddrPort) string {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return target
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() || a.Is4() == client.Addr().Is4() {
		return target
	}
	if client.Addr().Is4() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return net.JoinHostPort("::1", port)
}
