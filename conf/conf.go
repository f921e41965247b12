// Package conf is bmpproxy's configuration model: what to listen on, where to
// forward, and how. It parses every address into netip types at load time and
// knows nothing of the runtime.
package conf

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/dnsname"
	"github.com/bmpproxy/bmpproxy/netsetup"
)

// ProxyProtocol selects the header written to the target before any payload.
type ProxyProtocol string

// The PROXY protocol modes.
const (
	ProxyV2   ProxyProtocol = "v2"   // binary header, AF_INET for IPv4 clients, AF_INET6 for IPv6
	ProxyV1   ProxyProtocol = "v1"   // text header
	ProxyNone ProxyProtocol = "none" // no header, as docker-proxy
	// ProxyTransparent sends no header: the target is dialed from the
	// client's own address and port (IP_TRANSPARENT), so an unmodified
	// collector sees the router. It needs CAP_NET_ADMIN and return
	// routing; see "bmpproxy transparent-setup".
	ProxyTransparent ProxyProtocol = "transparent"
)

// ParseProxyProtocol parses "v2", "v1", "none" or "transparent".
func ParseProxyProtocol(s string) (ProxyProtocol, error) {
	switch p := ProxyProtocol(s); p {
	case ProxyV2, ProxyV1, ProxyNone, ProxyTransparent:
		return p, nil
	}
	return "", fmt.Errorf("unknown proxy protocol %q (want v2, v1, none or transparent)", s)
}

// Defaults.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultDrainTimeout   = 5 * time.Second
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "json"

	DefaultProxyHeaderTimeout = 5 * time.Second
	// MinProxyHeaderTimeout is the shortest wait allowed for a trusted
	// proxy's header: a loaded load balancer may be slow to send it.
	MinProxyHeaderTimeout = 3 * time.Second

	DefaultBMPTimeout = 10 * time.Second

	// DefaultMaxPipes is the splice package's own default.
	DefaultMaxPipes = 1024

	DefaultTransparentMark  = 1
	DefaultTransparentTable = 100

	DefaultKeepAliveIdle     = 15 * time.Second
	DefaultKeepAliveInterval = 15 * time.Second
	DefaultKeepAliveCount    = 9

	// DefaultBuffer is how far a collector may fall behind its router
	// before its leg is cut; MinBuffer and MaxBuffer bound the setting.
	DefaultBuffer = 4 * MiB
	MinBuffer     = 64 * KiB
	MaxBuffer     = 1 * GiB

	// DefaultResyncMemory bounds the resync state of the whole process;
	// MinResyncMemory is the least it may be set to. There is no
	// unbounded setting.
	DefaultResyncMemory = 1 * GiB
	MinResyncMemory     = 16 * MiB
)

// ByteSize is an amount of memory, in bytes. A file writes it as a whole
// number of bytes, or of KiB, MiB, GiB or TiB: "4MiB", "512KiB",
// "1048576".
type ByteSize int64

// The units of a ByteSize, powers of 1024.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

type byteUnit struct {
	name string
	size ByteSize
}

// byteUnits are the units a size may have, the largest first.
func byteUnits() []byteUnit {
	return []byteUnit{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}, {"B", 1}}
}

// ParseByteSize parses a whole number of bytes, alone or with the unit B,
// KiB, MiB, GiB or TiB after it, a space between them allowed: "4MiB",
// "512 KiB", "1048576". Decimal units (MB) are refused with the binary
// one to write instead.
func ParseByteSize(s string) (ByteSize, error) {
	want := fmt.Errorf("invalid size %q (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)", s)
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, want
	}
	digits, unit := t[:i], strings.TrimSpace(t[i:])
	mult := ByteSize(0)
	if unit == "" {
		mult = 1
	}
	for _, u := range byteUnits() {
		if unit == u.name {
			mult = u.size
		}
	}
	if mult == 0 {
		// A unit in another case, or a decimal one: say what to write.
		l := strings.ToLower(unit)
		for _, u := range byteUnits()[:4] {
			switch p := strings.ToLower(u.name[:1]); l {
			case p + "ib":
				return 0, fmt.Errorf("invalid size %q (write %s%s)", s, digits, u.name)
			case p, p + "b":
				return 0, fmt.Errorf("invalid size %q (write %s%s: sizes count in powers of 1024)", s, digits, u.name)
			}
		}
		return 0, want
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || ByteSize(n) > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return ByteSize(n) * mult, nil
}

// String returns b in the largest unit that holds it whole, "4MiB", or as
// a number of bytes, "65537"; ParseByteSize reads it back.
func (b ByteSize) String() string {
	for _, u := range byteUnits() {
		if u.size > 1 && b != 0 && b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// Target is where a listener forwards to. Host is an IP literal or a DNS
// name; a name is resolved when a connection is dialed, never at load time,
// so a collector that restarts with a new address is followed.
type Target struct {
	Host string
	Port uint16
}

// ParseTarget parses "host:port" or "[v6]:port". The port must be 1-65535.
func ParseTarget(s string) (Target, error) {
	host, port, err := splitHostPort(s)
	if err != nil {
		return Target{}, err
	}
	if host == "" {
		return Target{}, fmt.Errorf("missing host in %q", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return Target{}, fmt.Errorf("%w in %q", err, s)
	}
	if p == 0 {
		return Target{}, fmt.Errorf("port 0 in %q: a target needs a real port", s)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return Target{Host: a.Unmap().String(), Port: p}, nil
	}
	if !dnsname.Valid(host) {
		return Target{}, fmt.Errorf("invalid host %q in %q", host, s)
	}
	return Target{Host: host, Port: p}, nil
}

// String returns the target in host:port form, suitable for dialing.
func (t Target) String() string {
	return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
}

// key is t as far as it tells targets apart: a name in any case is the
// same name.
func (t Target) key() Target { return Target{Host: strings.ToLower(t.Host), Port: t.Port} }

// IsZero reports whether t is unset.
func (t Target) IsZero() bool { return t == Target{} }

// ParseListen parses a listen address. It must be an IP literal with a port:
// "[::]:5000" (dual-stack: IPv4 and IPv6), "0.0.0.0:5000" (IPv4 only),
// "198.51.100.1:5000" or "[2001:db8::1]:5000". A bare ":5000" means
// "[::]:5000". IPv4-mapped IPv6 addresses are unmapped. Port 0 asks the
// kernel for a free port.
func ParseListen(s string) (netip.AddrPort, error) {
	host, port, err := splitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w in %q", err, s)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), p), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address in %q (listen on an address, not a name)", host, s)
	}
	if a.Zone() != "" && !a.Is6() {
		return netip.AddrPort{}, fmt.Errorf("zone on non-IPv6 address in %q", s)
	}
	return netip.AddrPortFrom(a.Unmap(), p), nil
}

// parseDial parses the address of a router to dial: an IP literal with a
// port, "198.51.100.9:5000" or "[2001:db8::1]:5000", never a name (a
// router's address is not looked up) nor an unspecified address or port 0.
// IPv4-mapped IPv6 addresses are unmapped.
func parseDial(s string) (netip.AddrPort, error) {
	host, port, err := splitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w in %q", err, s)
	}
	if host == "" {
		return netip.AddrPort{}, fmt.Errorf("missing address in %q (a router to dial is given by its address)", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address in %q (a router to dial is given by its address, not a name)", host, s)
	}
	ap := netip.AddrPortFrom(a.Unmap(), p)
	if err := checkDial(ap, strconv.Quote(s)); err != nil {
		return netip.AddrPort{}, err
	}
	return ap, nil
}

// checkDial reports what makes a no router's address to dial; in is how
// the error names it.
func checkDial(a netip.AddrPort, in string) error {
	switch {
	case !a.IsValid():
		return errors.New("invalid address")
	case a.Addr().IsUnspecified():
		return fmt.Errorf("unspecified address in %s: a router to dial is given by its own address", in)
	case a.Port() == 0:
		return fmt.Errorf("port 0 in %s: a router to dial needs a real port", in)
	}
	return nil
}

// splitHostPort is net.SplitHostPort with errors that quote s and, for an
// IPv6 address written without brackets, give the bracketed form: an
// address with a port, "2001:db8::1:5000" becomes "[2001:db8::1]:5000",
// and an address alone, "2001:db8::1", "[2001:db8::1]:PORT".
func splitHostPort(s string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(s)
	if err == nil {
		return host, port, nil
	}
	var ae *net.AddrError
	if !errors.As(err, &ae) {
		return "", "", err
	}
	msg := fmt.Sprintf("%s in %q", strings.TrimSuffix(ae.Err, " in address"), s)
	if !strings.HasPrefix(s, "[") && strings.Count(s, ":") > 1 {
		if h, p, ok := cutLast(s, ":"); ok && isPort(p) && isIPv6(h) {
			return "", "", fmt.Errorf("%s (write an IPv6 address with a port in brackets: %q)", msg, "["+h+"]:"+p)
		}
		if isIPv6(s) {
			return "", "", fmt.Errorf("%s (an IPv6 address needs brackets and a port: %q)", msg, "["+s+"]:PORT")
		}
	}
	return "", "", errors.New(msg)
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func isPort(s string) bool {
	_, err := strconv.ParseUint(s, 10, 16)
	return err == nil
}

func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port")
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return uint16(p), nil
}

// Leg is one collector that every router session of a listener goes to.
type Leg struct {
	// Target is dialed once per router session, for this leg.
	Target Target
	// ProxyProtocol is the header sent to this collector. Unset, it is
	// the listener's.
	ProxyProtocol ProxyProtocol
	// Buffer bounds how far this collector may fall behind its router
	// before the leg is cut: MinBuffer to MaxBuffer.
	Buffer ByteSize
	// TransparentMark is the SO_MARK of this leg's socket when it is
	// dialed transparently. Unset, it is the listener's.
	TransparentMark uint32
}

// Listener is one port mapping: the addresses it accepts on and the
// targets it forwards to. DefaultListener has every default; ApplyDefaults
// reads a zero field as unset.
type Listener struct {
	// Name identifies the listener in logs. Unset, it is "default" for
	// the only listener and "listenerN" for the Nth.
	Name string
	// Listen holds the addresses to accept on. See ParseListen.
	Listen []netip.AddrPort
	// Targets are the collectors each router session goes to, dialed in
	// this order; there is at least one, and no two are the same. The
	// first is the primary, the only one whose bytes go back to the
	// router. Complete and ApplyDefaults fill each leg's unset
	// ProxyProtocol and TransparentMark with the listener's.
	Targets []Leg
	// Target is the primary's address, Targets[0].Target, for the code
	// that knows one target only. Complete and ApplyDefaults keep it so,
	// and make a Target set in Go with no Targets a list of one, with the
	// listener's settings.
	Target Target
	// ProxyProtocol is the header sent to a target that sets none of its
	// own: all of them, when the file says target.
	ProxyProtocol ProxyProtocol
	// ConnectTimeout bounds name resolution and connect. It is positive.
	ConnectTimeout time.Duration
	// Allow lists the client prefixes that may connect. Empty means any.
	// A client outside them is refused before anything is dialed. For a
	// connection from a trusted proxy (AcceptProxyFrom) the client is the
	// address in its header.
	Allow Prefixes
	// AcceptProxyFrom lists trusted upstream proxies. A connection from
	// one must start with a PROXY header (v1 or v2), whose source address
	// is then used as the client's. A connection from anyone else that
	// starts with a PROXY header is refused. Empty means no header is
	// expected, and leading bytes are payload whatever they look like.
	AcceptProxyFrom Prefixes
	// ProxyHeaderTimeout bounds the wait for a trusted proxy's header.
	ProxyHeaderTimeout time.Duration
	// MaxConnections bounds the open connections; a connection beyond it
	// is closed at once. Zero means no bound, which a file writes as
	// "none".
	MaxConnections int
	// TransparentMark is the SO_MARK of target sockets dialed
	// transparently, which the return routing matches, for a target that
	// sets none of its own. It is at least 1.
	TransparentMark uint32
	// KeepAlive is TCP keepalive on both sockets of each connection.
	KeepAlive KeepAlive
	// Log holds the log settings for this listener's lines. Unset fields
	// inherit the top level's.
	Log Log
	// BMP turns on the BMP pre-check: before the target is dialed, the
	// first BMP message header must arrive within BMPTimeout and be valid,
	// and an Initiation message is read for the router's name.
	BMP bool
	// BMPTimeout bounds the wait for the first BMP message. It is
	// positive.
	BMPTimeout time.Duration
	// Resync keeps each router's BMP state and replays it to a leg that
	// connects, reconnects or recovers from being cut, so that the router
	// never notices a collector restart. It needs BMP.
	Resync bool
	// Pool, when not nil, is the pool of collectors this listener spreads
	// its router sessions over, one member each, in place of Targets:
	// Targets is then empty and Target zero.
	Pool *Pool
	// Dial, when not empty, lists routers that wait to be dialed (passive
	// BMP stations), in place of Listen: each is connected to, and
	// connected to again with backoff whenever its session ends or it
	// cannot be reached, and its session is then handled as an accepted
	// one. Listen is then empty.
	Dial []netip.AddrPort
}

// Pool is a listener's pool of collectors (pool: in a file). Each router
// session goes to one healthy member, chosen by rendezvous hashing of the
// router's address; a member is one address that a target resolves to.
type Pool struct {
	// Targets are host:port each; a name may resolve to many addresses,
	// each a member. There is at least one, and none is given twice.
	Targets []Target
	// ProxyProtocol is the header sent to every member. Unset, it is the
	// listener's.
	ProxyProtocol ProxyProtocol
	// Buffer bounds how far a member may fall behind a router before the
	// router's leg to it is cut: MinBuffer to MaxBuffer.
	Buffer ByteSize
	// TransparentMark is the SO_MARK of a member's socket dialed
	// transparently. Unset, it is the listener's.
	TransparentMark uint32
	// HealthInterval is how often every member is checked: at least
	// MinPoolInterval.
	HealthInterval time.Duration
	// ResolveInterval is how often the targets' names are resolved again:
	// at least MinPoolInterval.
	ResolveInterval time.Duration
	// HoldDown is how long a member whose router legs keep failing (three
	// within a minute) is kept down, even if it accepts connections:
	// doubled on each repeat, up to ten times as long. At least
	// MinPoolInterval.
	HoldDown time.Duration
	// Rebalance moves, when a member joins or comes back, the routers that
	// now hash to it, each with a replay; it needs the listener's Resync.
	// Off, a router stays on its member until that member fails or is
	// drained.
	Rebalance bool
}

// Pool defaults and bounds.
const (
	DefaultHealthInterval  = 5 * time.Second
	DefaultResolveInterval = 30 * time.Second
	DefaultHoldDown        = 30 * time.Second
	MinPoolInterval        = 100 * time.Millisecond
)

// Prefixes is a list of address prefixes, as allow lists hold them.
type Prefixes []netip.Prefix

// Contains reports whether a is in any of ps.
func (ps Prefixes) Contains(a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// KeepAlive configures TCP keepalive probes. With the defaults a peer that
// vanishes is detected after Idle + Count × Interval, about 2.5 minutes.
type KeepAlive struct {
	// Disabled turns keepalive off; the other fields then do nothing.
	Disabled bool
	// Idle is the quiet time before the first probe.
	Idle time.Duration
	// Interval is the time between probes.
	Interval time.Duration
	// Count is the number of unanswered probes before the connection is
	// dropped.
	Count int
}

// Log selects log level and format.
type Log struct {
	// Level is a level name; see LevelNames.
	Level string
	// Format is "json" or "console".
	Format string
}

// Splice tunes the zero-copy data path.
type Splice struct {
	// Disabled forces the userspace copy for every connection.
	Disabled bool
	// MaxPipes bounds the pipes that exist at once. It is positive.
	MaxPipes int
}

// Config is a whole bmpproxy configuration. Default has every top-level
// default; ApplyDefaults reads a zero field as unset.
type Config struct {
	Listeners []Listener
	// Admin is the address of the HTTP admin listener. The zero value
	// means none.
	Admin netip.AddrPort
	// AdminTokenFile is the path of the file that holds the admin
	// listener's token. Empty means none.
	AdminTokenFile string
	// TransparentSetup, if set, is the return-routing case ("loopback",
	// "namespace" or "docker") that bmpproxy applies, idempotently, at
	// start in its own network namespace, for its transparent listeners.
	// It is never removed automatically.
	TransparentSetup string
	// TransparentTable is the routing table the return routing uses.
	TransparentTable int
	// DrainTimeout is how long open connections may run after a stop
	// signal before they are closed. Zero closes them at once.
	DrainTimeout time.Duration
	// ResyncMemory bounds the memory that the resync state of every
	// router of the process may take together: at least MinResyncMemory.
	ResyncMemory ByteSize
	Log          Log
	Splice       Splice
}

// Validate reports every problem at once, each prefixed with its path, for
// example "listeners[0].target: missing".
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Err: fmt.Errorf(format, args...)})
	}
	if len(c.Listeners) == 0 {
		add("listeners", "at least one listener is required")
	}
	if err := checkFormat(c.Log.Format); err != nil {
		add("log.format", "%v", err)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		add("log.level", "%v", err)
	}
	if c.DrainTimeout < 0 {
		add("drain_timeout", "must not be negative, got %s (0s closes connections at once)", c.DrainTimeout)
	}
	if c.ResyncMemory < MinResyncMemory {
		add("resync_memory", "must be at least %s, got %s (the resync state is always bounded)", MinResyncMemory, c.ResyncMemory)
	}
	if c.Splice.MaxPipes <= 0 {
		add("splice.max_pipes", "must be positive, got %d", c.Splice.MaxPipes)
	}
	if c.TransparentSetup != "" {
		if err := netsetup.CheckCase(c.TransparentSetup); err != nil {
			add("transparent_setup", "%v", err)
		}
		if c.TransparentTable < 1 || c.TransparentTable > 252 {
			add("transparent_table", "must be 1-252, got %d", c.TransparentTable)
		}
		marks := map[uint32]bool{}
		for _, l := range c.Listeners {
			for _, m := range l.transparentMarks() {
				marks[m] = true
			}
		}
		switch {
		case len(marks) == 0:
			add("transparent_setup", "set, but no listener has proxy_protocol: transparent")
		case len(marks) > 1:
			add("transparent_setup", "the transparent listeners must share one transparent_mark")
		}
	}
	names := map[string]int{}
	seen := map[netip.AddrPort]string{}
	if c.Admin.IsValid() {
		seen[c.Admin] = "admin"
	}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if j, dup := names[l.Name]; dup {
			add(p+".name", "%q is already used by listeners[%d]", l.Name, j)
		}
		names[l.Name] = i
		if l.Dial != nil {
			checkDialer(p, l, add)
		} else if len(l.Listen) == 0 {
			add(p+".listen", "at least one address is required")
		}
		for k, a := range l.Listen {
			lp := fmt.Sprintf("%s.listen[%d]", p, k)
			if !a.IsValid() {
				add(lp, "invalid address")
				continue
			}
			if other, dup := seen[a]; dup && a.Port() != 0 {
				add(lp, "%s is already used by %s", a, other)
			}
			seen[a] = lp
		}
		checkTargets(p, l, add)
		if _, err := ParseProxyProtocol(string(l.ProxyProtocol)); err != nil {
			add(p+".proxy_protocol", "%v", err)
		}
		if l.ConnectTimeout <= 0 {
			add(p+".connect_timeout", "must be positive, got %s", l.ConnectTimeout)
		}
		if len(l.AcceptProxyFrom) > 0 && l.ProxyHeaderTimeout < MinProxyHeaderTimeout {
			add(p+".proxy_header_timeout", "must be at least %s, got %s", MinProxyHeaderTimeout, l.ProxyHeaderTimeout)
		}
		if l.BMPTimeout <= 0 {
			add(p+".bmp_timeout", "must be positive, got %s", l.BMPTimeout)
		}
		if l.Resync && !l.BMP {
			add(p+".resync", "refused without bmp: true; add bmp: true (resync keeps each router's BMP state, which only a BMP listener reads)")
		}
		if l.MaxConnections < 0 {
			add(p+".max_connections", "must not be negative, got %d", l.MaxConnections)
		}
		if ka := l.KeepAlive; !ka.Disabled {
			if ka.Idle < time.Second || ka.Interval < time.Second {
				add(p+".tcp_keepalive", "idle and interval must be at least 1s, got %s and %s", ka.Idle, ka.Interval)
			}
			if ka.Count < 1 || ka.Count > 127 {
				add(p+".tcp_keepalive.count", "must be 1-127, got %d", ka.Count)
			}
		}
		// An inherited bad value is reported once, at the top level.
		if _, err := parseLevel(l.Log.Level); err != nil && l.Log.Level != c.Log.Level {
			add(p+".log.level", "%v", err)
		}
		if err := checkFormat(l.Log.Format); err != nil && l.Log.Format != c.Log.Format {
			add(p+".log.format", "%v", err)
		}
	}
	// [::]:P is dual-stack: it takes every IPv4 address on P too, whichever
	// comes first.
	overlap := func(path string, a netip.AddrPort) {
		if !a.IsValid() || a.Port() == 0 || !a.Addr().Is4() {
			return
		}
		wild := netip.AddrPortFrom(netip.IPv6Unspecified(), a.Port())
		if other, dup := seen[wild]; dup {
			add(path, "%s overlaps %s, which is %s and also accepts IPv4", a, other, wild)
		}
	}
	overlap("admin", c.Admin)
	for i, l := range c.Listeners {
		for k, a := range l.Listen {
			overlap(fmt.Sprintf("listeners[%d].listen[%d]", i, k), a)
		}
	}
	return errors.Join(errs...)
}

// checkDialer reports the problems of l, which dials its routers, at p,
// l's path. The addresses to dial are checked within l only: two
// listeners may dial one router, and none of them is a port of this host.
func checkDialer(p string, l Listener, add func(path, format string, args ...any)) {
	if len(l.Listen) > 0 {
		add(p+".dial", "excludes listen; a listener either accepts routers or dials them: give each its own listener")
	}
	if len(l.Dial) == 0 {
		add(p+".dial", "at least one address is required")
	}
	seen := map[netip.AddrPort]int{}
	for k, a := range l.Dial {
		dp := fmt.Sprintf("%s.dial[%d]", p, k)
		if err := checkDial(a, a.String()); err != nil {
			add(dp, "%v", err)
		} else if j, dup := seen[a]; dup {
			add(dp, "%s is already %s.dial[%d]; list each router once", a, p, j)
		} else {
			seen[a] = k
		}
	}
	if len(l.AcceptProxyFrom) > 0 {
		add(p+".accept_proxy_from", "refused with dial: a dialed router speaks first-hand; accept_proxy_from is for listeners")
	}
	// Refused rather than ignored: every router dialed is one of dial's,
	// so allow could only refuse a router that dial asks for, or nothing,
	// and an allow list that silently filters nothing misleads whoever
	// reads the file.
	if len(l.Allow) > 0 {
		add(p+".allow", "refused with dial: the routers dialed are the ones under dial, which allow would not filter")
	}
}

// checkTargets reports the problems of l's targets, or of its pool, at p,
// l's path.
func checkTargets(p string, l Listener, add func(path, format string, args ...any)) {
	if l.Pool != nil {
		if len(l.Targets) > 0 || !l.Target.IsZero() {
			add(p+".pool", "excludes target and targets; a pool's collectors go under pool.targets")
		}
		checkPool(p+".pool", l, add)
		return
	}
	switch {
	case l.Targets == nil && l.Target.IsZero():
		add(p+".target", "missing (a listener needs target, targets or pool)")
	case len(l.Targets) == 0 && l.Target.IsZero():
		add(p+".targets", "at least one target is required") // targets: []
	case len(l.Targets) == 0:
		add(p+".targets", "missing, though target is %s (Complete or ApplyDefaults makes target a list of one)", l.Target)
	case l.Target != l.Targets[0].Target:
		add(p+".target", "%s, but targets[0] is %s (target is the first of targets)", l.Target, l.Targets[0].Target)
	}
	seen := map[Target]int{}
	for k, leg := range l.Targets {
		lp := fmt.Sprintf("%s.targets[%d]", p, k)
		if leg.Target.IsZero() {
			add(lp+".target", "missing")
		} else if j, dup := seen[leg.Target.key()]; dup {
			add(lp, "%s is already %s.targets[%d]; list each target once", leg.Target, p, j)
		} else {
			seen[leg.Target.key()] = k
		}
		if _, err := ParseProxyProtocol(string(leg.ProxyProtocol)); err != nil {
			add(lp+".proxy_protocol", "%v", err)
		}
		if leg.Buffer < MinBuffer || leg.Buffer > MaxBuffer {
			add(lp+".buffer", "must be at least %s and at most %s, got %s", MinBuffer, MaxBuffer, leg.Buffer)
		}
		if leg.TransparentMark < 1 {
			add(lp+".transparent_mark", "must be 1-4294967295, got 0")
		}
	}
}

// checkPool reports the problems of l's pool, at p, its path.
func checkPool(p string, l Listener, add func(path, format string, args ...any)) {
	pl := l.Pool
	switch {
	case pl.Targets == nil:
		add(p+".targets", "missing")
	case len(pl.Targets) == 0:
		add(p+".targets", "at least one target is required")
	}
	seen := map[Target]int{}
	for k, t := range pl.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", p, k)
		if t.IsZero() {
			add(tp, "missing")
		} else if j, dup := seen[t.key()]; dup {
			add(tp, "%s is already %s.targets[%d]; list each target once", t, p, j)
		} else {
			seen[t.key()] = k
		}
	}
	if _, err := ParseProxyProtocol(string(pl.ProxyProtocol)); err != nil {
		add(p+".proxy_protocol", "%v", err)
	}
	if pl.Buffer < MinBuffer || pl.Buffer > MaxBuffer {
		add(p+".buffer", "must be at least %s and at most %s, got %s", MinBuffer, MaxBuffer, pl.Buffer)
	}
	if pl.TransparentMark < 1 {
		add(p+".transparent_mark", "must be 1-4294967295, got 0")
	}
	if pl.HealthInterval < MinPoolInterval {
		add(p+".health_interval", "must be at least %s, got %s", MinPoolInterval, pl.HealthInterval)
	}
	if pl.ResolveInterval < MinPoolInterval {
		add(p+".resolve_interval", "must be at least %s, got %s", MinPoolInterval, pl.ResolveInterval)
	}
	if pl.HoldDown < MinPoolInterval {
		add(p+".hold_down", "must be at least %s, got %s", MinPoolInterval, pl.HoldDown)
	}
	if pl.Rebalance && !l.Resync {
		add(p+".rebalance", "refused without resync: true; a router moved without resync would be reset (set resync: true, or rebalance: false)")
	}
}

// FieldError is one problem in a configuration, at Path (for example
// "listeners[0].target") and, when it came from a file, at Line.
type FieldError struct {
	Line int // 1-based; 0 when unknown
	Path string
	Err  error
}

func (e *FieldError) Error() string {
	msg := e.Err.Error()
	if e.Path != "" {
		msg = e.Path + ": " + msg
	}
	if e.Line > 0 {
		msg = "line " + strconv.Itoa(e.Line) + ": " + msg
	}
	return msg
}

func (e *FieldError) Unwrap() error { return e.Err }

func checkFormat(f string) error {
	switch f {
	case "json", "console":
		return nil
	}
	return fmt.Errorf("unknown format %q (want json or console)", f)
}

// LevelNames lists the accepted log level names, in increasing severity.
func LevelNames() []string {
	return []string{"trace", "debug", "info", "warn", "error", "disabled"}
}

func parseLevel(s string) (int, error) {
	names := LevelNames()
	for i, n := range names {
		if s == n {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown level %q (want one of %s)", s, strings.Join(names, ", "))
}

// TransparentMark returns the mark of the targets dialed transparently,
// a pool's members included, for TransparentSetup; Validate makes sure
// they share one.
func (c *Config) TransparentMark() uint32 {
	for _, l := range c.Listeners {
		if ms := l.transparentMarks(); len(ms) > 0 {
			return ms[0]
		}
	}
	return DefaultTransparentMark
}

// transparentMarks returns the marks of l's legs dialed transparently, and
// of its pool when its members are, in order.
func (l *Listener) transparentMarks() []uint32 {
	var ms []uint32
	for _, leg := range l.Targets {
		if leg.ProxyProtocol == ProxyTransparent {
			ms = append(ms, leg.TransparentMark)
		}
	}
	if l.Pool != nil && l.Pool.ProxyProtocol == ProxyTransparent {
		ms = append(ms, l.Pool.TransparentMark)
	}
	return ms
}
