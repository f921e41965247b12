package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
)

// checkTransparent refuses a configuration with a transparent listener
// when the process cannot dial transparently.
func checkTransparent(cfg *conf.Config) error {
	var names []string
	for _, l := range cfg.Listeners {
		if l.Pool != nil && l.Pool.ProxyProtocol == conf.ProxyTransparent {
			names = append(names, l.Name)
			continue
		}
		for _, leg := range l.Targets {
			if leg.ProxyProtocol == conf.ProxyTransparent {
				names = append(names, l.Name)
				break
			}
		}
	}
	if len(names) == 0 {
		return nil
	}
	ok, err := socket.HasNetAdmin()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("listener %q: proxy_protocol transparent needs CAP_NET_ADMIN (for IP_TRANSPARENT and SO_MARK); run as root, or grant it (setcap cap_net_admin+ep, or AmbientCapabilities=CAP_NET_ADMIN)", names[0])
	}
	return nil
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
