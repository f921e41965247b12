package testtarget

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/inspect"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// Kind is a BMP collector, named by what it does with a PROXY header, as
// the README's collector compatibility table says.
type Kind string

// The collectors. OpenBMP, gobmp and Rotonda read no header: they take
// the first byte as the BMP version. pmacct reads a header when one is
// there (bmp_daemon_parse_proxy_header: true) and the socket's address
// otherwise; its 1.7 releases read v2 only for IPv4 (family 0x11). HAProxy
// with accept-proxy reads v1 or v2 and refuses a connection without one;
// ProxyV2 stands for anything that requires v2.
const (
	OpenBMP  Kind = "openbmp"
	GoBMP    Kind = "gobmp"
	Rotonda  Kind = "rotonda"
	Pmacct17 Kind = "pmacct-1.7"
	Pmacct   Kind = "pmacct"
	HAProxy  Kind = "haproxy"
	ProxyV2  Kind = "proxy-v2"
)

// Kinds returns every Kind.
func Kinds() []Kind {
	return []Kind{OpenBMP, GoBMP, Rotonda, Pmacct17, Pmacct, HAProxy, ProxyV2}
}

// ParseKind returns the Kind named s.
func ParseKind(s string) (Kind, error) {
	if k := Kind(s); slices.Contains(Kinds(), k) {
		return k, nil
	}
	var names []string
	for _, k := range Kinds() {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("unknown collector %q: want one of %s", s, strings.Join(names, ", "))
}

// Seen is the router address a collector records for a session, and
// where it took it from.
type Seen struct {
	Addr netip.AddrPort
	From string
}

// Records returns what a collector of kind k records for a connection
// that arrived as rec (an inspect.Record: the header, if any, and the
// socket's peer), or an error naming what the collector does instead of
// recording it. A session that is not BMP behind its header is an error
// for every kind.
func (k Kind) Records(rec inspect.Record) (Seen, error) {
	peer, err := netip.ParseAddrPort(rec.Peer)
	if err != nil {
		return Seen{}, fmt.Errorf("peer %q: %w", rec.Peer, err)
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	socket := Seen{peer, "getpeername"}
	if rec.Error != "" {
		return Seen{}, fmt.Errorf("%s drops the session: %s", k, rec.Error)
	}
	switch k {
	case OpenBMP, GoBMP, Rotonda:
		if rec.Proxy != "none" {
			return Seen{}, fmt.Errorf("%s reads no PROXY header: it takes the %s header's first byte (%d) for the BMP version, logs \"Unsupported BMP message version\" and drops the session",
				k, rec.Proxy, map[string]int{"v1": 'P', "v2": 0x0d}[rec.Proxy])
		}
	case HAProxy:
		if rec.Proxy == "none" {
			return Seen{}, fmt.Errorf("%s with accept-proxy refuses a connection without a PROXY header", k)
		}
	case ProxyV2:
		if rec.Proxy != "v2" {
			return Seen{}, fmt.Errorf("%s expects a PROXY v2 header, got %s", k, rec.Proxy)
		}
	}
	if rec.BMPError != "" {
		return Seen{}, fmt.Errorf("%s: not a BMP session behind the header: %s", k, rec.BMPError)
	}
	if rec.Proxy == "none" || rec.Command == "LOCAL" {
		return socket, nil
	}
	src, err := netip.ParseAddrPort(rec.Src)
	if err != nil {
		return Seen{}, fmt.Errorf("%s header's source %q: %w", rec.Proxy, rec.Src, err)
	}
	header := Seen{src, rec.Proxy + " header"}
	switch {
	case k != Pmacct17 && k != Pmacct, rec.Family == "TCP4":
		return header, nil
	case rec.Proxy == "v1": // measured with pmacct 1.7.7; master parses v1 the same way
		return Seen{netip.AddrPortFrom(peer.Addr(), src.Port()), "getpeername, with the v1 TCP6 header's port"}, nil
	case k == Pmacct:
		return header, nil
	}
	return Seen{peer, "getpeername: pmacct 1.7 logs \"Unsupported family: 33\" and skips the AF_INET6 header"}, nil
}

// Collector is a stand-in collector: an inspect.Server on each of its
// listeners, which notes each connection's Record when the connection
// ends. Cleanup stops the servers, closing the listeners and connections,
// and waits for them.
type Collector struct {
	Kind Kind
	mu   sync.Mutex
	recs []inspect.Record
}

// NewCollector serves lns as a collector of kind k until cleanup.
func NewCollector(t testing.TB, k Kind, lns ...net.Listener) *Collector {
	t.Helper()
	c := &Collector{Kind: k}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, ln := range lns {
		srv := &inspect.Server{Out: c, JSON: true, HeaderTimeout: time.Second}
		wg.Go(func() {
			if err := srv.Serve(ctx, ln); err != nil {
				t.Errorf("stand-in %s on %s: %v", k, ln.Addr(), err)
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return c
}

// Write takes one JSON record line from an inspect.Server.
func (c *Collector) Write(line []byte) (int, error) {
	var rec inspect.Record
	if err := json.Unmarshal(line, &rec); err != nil {
		return 0, fmt.Errorf("inspect record %q: %w", line, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, rec)
	return len(line), nil
}

// WaitFor waits up to timeout for a connection whose Initiation carried
// sysName to end, and returns its record.
func (c *Collector) WaitFor(t testing.TB, timeout time.Duration, sysName string) inspect.Record {
	t.Helper()
	var got inspect.Record
	waitfor.Within(t, timeout, fmt.Sprintf("the %s stand-in to see the session of %q end", c.Kind, sysName), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.recs {
			if r.SysName == sysName {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// LocalOnly reports whether rec is of a connection that carried a PROXY
// v2 LOCAL header and nothing after it: a proxy's health check, such as
// a bmpproxy pool's, which a collector that reads v2 takes for the
// proxy's own connection and no router's.
func LocalOnly(rec inspect.Record) bool {
	return rec.Proxy == "v2" && rec.Command == "LOCAL" && rec.Bytes == 0 && rec.Error == ""
}

// WaitForLocalOnly waits up to timeout for n connections that LocalOnly
// reports, to end, and returns every such record so far.
func (c *Collector) WaitForLocalOnly(t testing.TB, timeout time.Duration, n int) []inspect.Record {
	t.Helper()
	var got []inspect.Record
	waitfor.Within(t, timeout, fmt.Sprintf("the %s stand-in to see %d connections with only a PROXY v2 LOCAL header end", c.Kind, n), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		got = got[:0]
		for _, r := range c.recs {
			if LocalOnly(r) {
				got = append(got, r)
			}
		}
		return len(got) >= n
	})
	return got
}

// Records returns every record so far, in the order the connections ended.
func (c *Collector) Records() []inspect.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}
