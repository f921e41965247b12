package conf

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The description of the configuration: for each setting, one entry that
// knows its key, its default, how it decodes and prints, and its flag, if
// it has one. Parse, Default, DefaultListener, ApplyDefaults, YAML, Flags
// and FlagConfig all read it, so none of them can forget a setting.

// entry is one setting of a section S, the struct that a YAML mapping
// decodes into (Config or Listener).
type entry[S any] struct {
	// key is the setting's place in S's mapping, dotted when it is in a
	// nested mapping: "drain_timeout", "tcp_keepalive.idle".
	key string
	// def is the default, in file syntax, that an absent key gets. Empty
	// when the key is required, or when its default is derived from other
	// settings (see derive).
	def string
	// keepZero stops ApplyDefaults from taking the field's zero for
	// unset: the zero is a setting of its own.
	keepZero bool
	// short marks the boolean that a bare true or false in place of its
	// mapping sets, as in "tcp_keepalive: false".
	short bool
	// field returns a pointer to the field of s that holds the setting.
	field func(s *S) any
	// decode sets the field, and nothing else, from n; every problem goes
	// to d, at path.
	decode func(d *decoder, n *yaml.Node, path string, s *S)
	// print returns the field in file syntax; decoding it gives the field
	// back. It returns nil when another key says the same (target and
	// targets), and the key is then left out.
	print func(s *S) *yaml.Node
	flag  *flagSpec
}

// flagSpec is the command-line form of a setting (see Flag).
type flagSpec struct {
	name    string
	aliases []string
	env     string
	usage   string
	// def is the flag's default, when it differs from the file's.
	def string
	// repeated: each use adds a value, and the environment variable holds
	// them comma-separated.
	repeated bool
	// negate: the flag says the opposite of the key (--splice against
	// splice.disabled).
	negate bool
	// example, for a flag that must be given, is a value to show when it
	// is missing.
	example string
	// override: the flag may replace a config file's value (see
	// Flag.Overrides).
	override bool
}

func (e entry[S]) withFlag(f flagSpec) entry[S] {
	e.flag = &f
	return e
}

// section is the description of one struct, in the order it prints.
type section[S any] []entry[S]

func configSettings() section[Config] {
	return section[Config]{
		adminEntry().withFlag(flagSpec{
			name: "admin-listen", env: "BMPPROXY_ADMIN_LISTEN",
			usage: "address for the HTTP admin listener (/metrics, /routers, /healthz, /readyz, /version, POST /upgrade); none turns it off",
		}),
		optionalEntry("admin_token_file", func(c *Config) *string { return &c.AdminTokenFile }).withFlag(flagSpec{
			name: "admin-token-file", env: "BMPPROXY_ADMIN_TOKEN_FILE", override: true,
			usage: "file that holds the admin listener's token",
		}),
		durationEntry("drain_timeout", DefaultDrainTimeout.String(),
			func(c *Config) *time.Duration { return &c.DrainTimeout }).zeroIsSetting().withFlag(flagSpec{
			name: "drain-timeout", env: "BMPPROXY_DRAIN_TIMEOUT",
			usage: "after SIGINT or SIGTERM, how long open connections may continue before they are closed; 0s closes them at once",
		}),
		stringEntry("log.level", DefaultLogLevel, func(c *Config) *string { return &c.Log.Level }).withFlag(flagSpec{
			name: "log-level", env: "BMPPROXY_LOG_LEVEL", override: true, usage: "one of " + strings.Join(LevelNames(), ", "),
		}),
		stringEntry("log.format", DefaultLogFormat, func(c *Config) *string { return &c.Log.Format }).withFlag(flagSpec{
			name: "log-format", env: "BMPPROXY_LOG_FORMAT", override: true, usage: "json or console",
		}),
		byteSizeEntry("resync_memory", DefaultResyncMemory.String(), func(c *Config) *ByteSize { return &c.ResyncMemory }).withFlag(flagSpec{
			name: "resync-memory", env: "BMPPROXY_RESYNC_MEMORY",
			usage: "bound on the BMP state that --resync keeps, all routers together (at least 16MiB); past it, the router " +
				"that passed it is no longer kept, and is disconnected, to resend its state, when a collector needs a replay",
		}),
		boolEntry("splice.disabled", "false", func(c *Config) *bool { return &c.Splice.Disabled }).withFlag(flagSpec{
			name: "splice", env: "BMPPROXY_SPLICE", def: "true", negate: true,
			usage: "move bytes with splice(2); --splice=false copies through user space",
		}),
		intEntry("splice.max_pipes", strconv.Itoa(DefaultMaxPipes), func(c *Config) *int { return &c.Splice.MaxPipes }).withFlag(flagSpec{
			name: "max-pipes", env: "BMPPROXY_MAX_PIPES",
			usage: "bound on kernel pipes in use at once (2 fds each); directions beyond it copy through user space",
		}),
		optionalEntry("transparent_setup", func(c *Config) *string { return &c.TransparentSetup }),
		intEntry("transparent_table", strconv.Itoa(DefaultTransparentTable), func(c *Config) *int { return &c.TransparentTable }),
		listenersEntry(),
	}
}

func listenerSettings() section[Listener] {
	return section[Listener]{
		stringEntry("name", "", func(l *Listener) *string { return &l.Name }),
		listenEntry().withFlag(flagSpec{
			name: "listen", aliases: []string{"l"}, env: "BMPPROXY_LISTEN", def: "[::]:5000", repeated: true,
			usage: "address to accept on; repeat for more. '[::]:P' (or ':P') is dual-stack and accepts IPv4 and IPv6, " +
				"'0.0.0.0:P' is IPv4 only, any other address listens on itself only",
		}),
		dialEntry(),
		targetEntry().withFlag(flagSpec{
			name: "target", aliases: []string{"t"}, env: "BMPPROXY_TARGET", example: "collector:5000", repeated: true,
			usage: "collector address as host:port; a name is resolved again for every connection (required). " +
				"Repeat it to send every router session to each collector; only the first one's replies reach the router",
		}),
		targetsEntry(),
		poolEntry(),
		proxyProtocolEntry(string(ProxyV2), func(l *Listener) *ProxyProtocol { return &l.ProxyProtocol }).withFlag(flagSpec{
			name: "proxy-protocol", env: "BMPPROXY_PROXY_PROTOCOL",
			usage: "header sent to each target before any payload: v2, v1, none, or transparent " +
				"(no header; the target is dialed from the client's own address, which needs CAP_NET_ADMIN)",
		}),
		durationEntry("connect_timeout", DefaultConnectTimeout.String(),
			func(l *Listener) *time.Duration { return &l.ConnectTimeout }).withFlag(flagSpec{
			name: "connect-timeout", env: "BMPPROXY_CONNECT_TIMEOUT",
			usage: "how long to wait for the target to answer before closing the client",
		}),
		prefixesEntry("allow", func(l *Listener) *Prefixes { return &l.Allow }),
		prefixesEntry("accept_proxy_from", func(l *Listener) *Prefixes { return &l.AcceptProxyFrom }),
		durationEntry("proxy_header_timeout", DefaultProxyHeaderTimeout.String(),
			func(l *Listener) *time.Duration { return &l.ProxyHeaderTimeout }),
		maxConnectionsEntry(),
		enabledEntry("tcp_keepalive.enabled", func(l *Listener) *bool { return &l.KeepAlive.Disabled }),
		durationEntry("tcp_keepalive.idle", DefaultKeepAliveIdle.String(),
			func(l *Listener) *time.Duration { return &l.KeepAlive.Idle }),
		durationEntry("tcp_keepalive.interval", DefaultKeepAliveInterval.String(),
			func(l *Listener) *time.Duration { return &l.KeepAlive.Interval }),
		intEntry("tcp_keepalive.count", strconv.Itoa(DefaultKeepAliveCount), func(l *Listener) *int { return &l.KeepAlive.Count }),
		// A listener's log settings default to the top level's (derive).
		stringEntry("log.level", "", func(l *Listener) *string { return &l.Log.Level }),
		stringEntry("log.format", "", func(l *Listener) *string { return &l.Log.Format }),
		boolEntry("bmp", "false", func(l *Listener) *bool { return &l.BMP }).withFlag(flagSpec{
			name: "bmp", env: "BMPPROXY_BMP",
			usage: "BMP pre-check: refuse a client whose first bytes are not a BMP v3 message, before dialing",
		}),
		boolEntry("resync", "false", func(l *Listener) *bool { return &l.Resync }).withFlag(flagSpec{
			name: "resync", env: "BMPPROXY_RESYNC",
			usage: "keep each router's BMP state and replay it to a collector that connects, reconnects or falls behind, " +
				"so that the router never notices (needs --bmp)",
		}),
		durationEntry("bmp_timeout", DefaultBMPTimeout.String(), func(l *Listener) *time.Duration { return &l.BMPTimeout }),
		transparentMarkEntry(strconv.Itoa(DefaultTransparentMark), func(l *Listener) *uint32 { return &l.TransparentMark }),
	}
}

// legSettings describes an item of a listener's targets. The unset
// proxy_protocol and transparent_mark are the listener's (derive).
func legSettings() section[Leg] {
	return section[Leg]{
		legTargetEntry(),
		proxyProtocolEntry("", func(g *Leg) *ProxyProtocol { return &g.ProxyProtocol }),
		byteSizeEntry("buffer", DefaultBuffer.String(), func(g *Leg) *ByteSize { return &g.Buffer }),
		transparentMarkEntry("", func(g *Leg) *uint32 { return &g.TransparentMark }),
	}
}

// poolSettings describes a listener's pool. The unset proxy_protocol and
// transparent_mark are the listener's (derive).
func poolSettings() section[Pool] {
	return section[Pool]{
		poolTargetsEntry(),
		proxyProtocolEntry("", func(pl *Pool) *ProxyProtocol { return &pl.ProxyProtocol }),
		byteSizeEntry("buffer", DefaultBuffer.String(), func(pl *Pool) *ByteSize { return &pl.Buffer }),
		transparentMarkEntry("", func(pl *Pool) *uint32 { return &pl.TransparentMark }),
		durationEntry("health_interval", DefaultHealthInterval.String(),
			func(pl *Pool) *time.Duration { return &pl.HealthInterval }),
		durationEntry("resolve_interval", DefaultResolveInterval.String(),
			func(pl *Pool) *time.Duration { return &pl.ResolveInterval }),
		durationEntry("hold_down", DefaultHoldDown.String(), func(pl *Pool) *time.Duration { return &pl.HoldDown }),
		boolEntry("rebalance", "false", func(pl *Pool) *bool { return &pl.Rebalance }),
	}
}

// Default returns a configuration with every top-level default and no
// listeners.
func Default() *Config {
	var c Config
	configSettings().defaults(&c)
	return &c
}

// DefaultListener returns a listener with every default: no name, no
// addresses and no target yet, and the log settings to inherit.
func DefaultListener() Listener {
	var l Listener
	listenerSettings().defaults(&l)
	return l
}

// defaultLeg returns a leg with every default that is data: no target,
// and the listener's settings to inherit.
func defaultLeg() Leg {
	var g Leg
	legSettings().defaults(&g)
	return g
}

// ApplyDefaults is for a Config built in Go, where a zero field means
// unset: it gives every zero field that has a default that default, except
// DrainTimeout, whose zero closes connections at once, and then the
// derived defaults (see Complete). A listener's Pool, when not nil, is
// filled in place. A parsed Config needs none of this.
func (c *Config) ApplyDefaults() {
	configSettings().fillZeros(c)
	ls, gs, ps := listenerSettings(), legSettings(), poolSettings()
	for i := range c.Listeners {
		l := &c.Listeners[i]
		ls.fillZeros(l)
		for k := range l.Targets {
			gs.fillZeros(&l.Targets[k])
		}
		if l.Pool != nil {
			ps.fillZeros(l.Pool)
		}
	}
	c.derive()
}

// Complete applies the defaults derived from other settings, a listener's
// name from its place, its log settings from the top level's and its
// targets' and pool's from its own, and then validates c. Parse does it
// after decoding; a Config built from flags needs it too.
func (c *Config) Complete() error {
	c.derive()
	return c.Validate()
}

// derive fills the defaults that depend on other settings.
func (c *Config) derive() {
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Name == "" {
			if len(c.Listeners) == 1 {
				l.Name = "default"
			} else {
				l.Name = "listener" + strconv.Itoa(i)
			}
		}
		if l.Log.Level == "" {
			l.Log.Level = c.Log.Level
		}
		if l.Log.Format == "" {
			l.Log.Format = c.Log.Format
		}
		if pl := l.Pool; pl != nil {
			if pl.ProxyProtocol == "" {
				pl.ProxyProtocol = l.ProxyProtocol
			}
			if pl.TransparentMark == 0 {
				pl.TransparentMark = l.TransparentMark
			}
		}
		// A pooled listener has no targets; one that sets both is
		// Validate's to report, not this to mend.
		if len(l.Targets) == 0 && !l.Target.IsZero() && l.Pool == nil {
			g := defaultLeg()
			g.Target = l.Target
			l.Targets = []Leg{g}
		}
		for k := range l.Targets {
			g := &l.Targets[k]
			if g.ProxyProtocol == "" {
				g.ProxyProtocol = l.ProxyProtocol
			}
			if g.TransparentMark == 0 {
				g.TransparentMark = l.TransparentMark
			}
		}
		if l.Target.IsZero() && len(l.Targets) > 0 {
			l.Target = l.Targets[0].Target
		}
	}
}

// defaults sets every setting of s that has a default to it.
func (sec section[S]) defaults(s *S) {
	for _, e := range sec {
		if e.def != "" {
			e.setDefault(s)
		}
	}
}

// fillZeros sets every zero setting of s that has a default to it.
func (sec section[S]) fillZeros(s *S) {
	for _, e := range sec {
		if e.def != "" && !e.keepZero && reflect.ValueOf(e.field(s)).Elem().IsZero() {
			e.setDefault(s)
		}
	}
}

// setDefault decodes e's default into s, as a file's value would be. A
// default that does not decode is a mistake in this file, which every test
// that parses a configuration finds.
func (e entry[S]) setDefault(s *S) {
	d := newDecoder()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(e.def), &doc); err != nil || len(doc.Content) != 1 {
		panic(fmt.Sprintf("conf: the default of %s, %q, is not a YAML value", e.key, e.def))
	}
	e.decode(d, doc.Content[0], e.key, s)
	if len(d.errs) > 0 {
		panic(fmt.Sprintf("conf: the default of %s: %v", e.key, errors.Join(d.errs...)))
	}
}

// decode decodes the mapping n into s, which holds S's defaults already.
func (sec section[S]) decode(d *decoder, n *yaml.Node, path string, s *S) {
	sec.mapping(d, n, path, "", s)
}

// mapping decodes n as the mapping of the keys that start with prefix
// ("" or "tcp_keepalive.").
func (sec section[S]) mapping(d *decoder, n *yaml.Node, path, prefix string, s *S) {
	fields := map[string]func(*yaml.Node, string){}
	for _, e := range sec {
		rest, ok := strings.CutPrefix(e.key, prefix)
		if !ok {
			continue
		}
		head, _, nested := strings.Cut(rest, ".")
		switch {
		case !nested:
			fields[head] = func(v *yaml.Node, p string) { e.decode(d, v, p, s) }
		case fields[head] == nil:
			sub := prefix + head + "."
			fields[head] = func(v *yaml.Node, p string) { sec.nested(d, v, p, sub, s) }
		}
	}
	d.mapping(n, path, fields)
}

// nested decodes the value of a key that holds a mapping, or, when it is
// a bare true or false, the short boolean of that mapping.
func (sec section[S]) nested(d *decoder, n *yaml.Node, path, prefix string, s *S) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		for _, e := range sec {
			if e.short && strings.HasPrefix(e.key, prefix) {
				e.decode(d, n, path, s)
				return
			}
		}
	}
	sec.mapping(d, n, path, prefix, s)
}

// print returns s as a mapping, every setting spelled out, in the order
// of sec, but for a key that another one prints in its stead, or that is
// absent when unset (pool, dial).
func (sec section[S]) print(s *S) *yaml.Node {
	root := &yaml.Node{Kind: yaml.MappingNode}
	maps := map[string]*yaml.Node{}
	for _, e := range sec {
		v := e.print(s)
		if v == nil {
			continue
		}
		keys := strings.Split(e.key, ".")
		m, prefix := root, ""
		for _, k := range keys[:len(keys)-1] {
			prefix += k + "."
			sub := maps[prefix]
			if sub == nil {
				sub = &yaml.Node{Kind: yaml.MappingNode}
				m.Content = append(m.Content, strNode(k), sub)
				maps[prefix] = sub
			}
			m = sub
		}
		m.Content = append(m.Content, strNode(keys[len(keys)-1]), v)
	}
	return root
}

func strNode(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func intNode(n int64) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(n, 10)}
}

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b)}
}

// listNode is a list of strings, one an item, or [] when there are none.
func listNode(items []string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode}
	if len(items) == 0 {
		n.Style = yaml.FlowStyle
	}
	for _, s := range items {
		n.Content = append(n.Content, strNode(s))
	}
	return n
}

// none is how a file says that an optional setting is unset.
const none = "none"

func fieldOf[S, T any](at func(*S) *T) func(*S) any {
	return func(s *S) any { return at(s) }
}

func (e entry[S]) zeroIsSetting() entry[S] {
	e.keepZero = true
	return e
}

func durationEntry[S any](key, def string, at func(*S) *time.Duration) entry[S] {
	return entry[S]{
		key: key, def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) { d.duration(n, p, at(s)) },
		print:  func(s *S) *yaml.Node { return strNode(at(s).String()) },
	}
}

func intEntry[S any](key, def string, at func(*S) *int) entry[S] {
	return entry[S]{
		key: key, def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) { d.integer(n, p, at(s)) },
		print:  func(s *S) *yaml.Node { return intNode(int64(*at(s))) },
	}
}

func boolEntry[S any](key, def string, at func(*S) *bool) entry[S] {
	return entry[S]{
		key: key, def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) { d.boolean(n, p, at(s)) },
		print:  func(s *S) *yaml.Node { return boolNode(*at(s)) },
	}
}

// enabledEntry is a key that says "enabled" for a field that says
// "disabled". A bare true or false in place of its mapping sets it.
func enabledEntry[S any](key string, disabled func(*S) *bool) entry[S] {
	return entry[S]{
		key: key, def: "true", short: true, field: fieldOf(disabled),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) {
			on := !*disabled(s)
			d.boolean(n, p, &on)
			*disabled(s) = !on
		},
		print: func(s *S) *yaml.Node { return boolNode(!*disabled(s)) },
	}
}

// stringEntry is any string; Validate checks the ones with a fixed set of
// values.
func stringEntry[S any](key, def string, at func(*S) *string) entry[S] {
	return entry[S]{
		key: key, def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) { d.str(n, p, at(s)) },
		print:  func(s *S) *yaml.Node { return strNode(*at(s)) },
	}
}

// optionalEntry is a string that is unset by default, and in a file when
// it is "none".
func optionalEntry[S any](key string, at func(*S) *string) entry[S] {
	return entry[S]{
		key: key, def: none, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) {
			v, ok := d.scalar(n, p, "a string or none")
			if !ok {
				return
			}
			if v == none {
				v = ""
			}
			*at(s) = v
		},
		print: func(s *S) *yaml.Node {
			if *at(s) == "" {
				return strNode(none)
			}
			return strNode(*at(s))
		},
	}
}

func prefixesEntry[S any](key string, at func(*S) *Prefixes) entry[S] {
	return entry[S]{
		key: key, def: "[]", field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) {
			*at(s) = nil
			d.prefixes(n, p, at(s))
		},
		print: func(s *S) *yaml.Node {
			var items []string
			for _, p := range *at(s) {
				items = append(items, p.String())
			}
			return listNode(items)
		},
	}
}

func adminEntry() entry[Config] {
	at := func(c *Config) *netip.AddrPort { return &c.Admin }
	return entry[Config]{
		key: "admin", def: none, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, c *Config) {
			s, ok := d.scalar(n, p, `an address such as "127.0.0.1:9180" or none`)
			if !ok {
				return
			}
			if s == none || s == "" {
				c.Admin = netip.AddrPort{}
				return
			}
			a, err := ParseListen(s)
			if err != nil {
				d.fail(n, p, "%v", err)
				return
			}
			c.Admin = a
		},
		print: func(c *Config) *yaml.Node {
			if !c.Admin.IsValid() {
				return strNode(none)
			}
			return strNode(c.Admin.String())
		},
	}
}

func listenersEntry() entry[Config] {
	return entry[Config]{
		key: "listeners", field: fieldOf(func(c *Config) *[]Listener { return &c.Listeners }),
		decode: func(d *decoder, n *yaml.Node, p string, c *Config) {
			ls := listenerSettings()
			c.Listeners = decodeList(d, n, p, "listeners", func(v *yaml.Node, p string, l *Listener) {
				ls.defaults(l)
				ls.decode(d, v, p, l)
				d.exclusive(v, p, "target", "targets", "list every target under targets")
				// The key reported is dropped, so that Validate does not
				// report it again; the pool, or dial, is kept.
				const poolFix = "a pool's collectors go under pool.targets"
				if d.exclusive(v, p, "target", "pool", poolFix) || d.exclusive(v, p, "targets", "pool", poolFix) {
					l.Targets, l.Target = nil, Target{}
				}
				if d.exclusive(v, p, "listen", "dial", "a listener either accepts routers or dials them: give each its own listener") {
					l.Listen = nil
				}
			})
		},
		print: func(c *Config) *yaml.Node {
			ls := listenerSettings()
			n := &yaml.Node{Kind: yaml.SequenceNode}
			if len(c.Listeners) == 0 {
				n.Style = yaml.FlowStyle
			}
			for i := range c.Listeners {
				n.Content = append(n.Content, ls.print(&c.Listeners[i]))
			}
			return n
		},
	}
}

func listenEntry() entry[Listener] {
	return entry[Listener]{
		key: "listen", field: fieldOf(func(l *Listener) *[]netip.AddrPort { return &l.Listen }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			l.Listen = nil
			d.list(n, p, func(v *yaml.Node, p string) {
				s, ok := d.scalar(v, p, `an address such as "[::]:5000"`)
				if !ok {
					return
				}
				a, err := ParseListen(s)
				if err != nil {
					d.fail(v, p, "%v", err)
					return
				}
				l.Listen = append(l.Listen, a)
			})
		},
		print: func(l *Listener) *yaml.Node {
			if len(l.Dial) > 0 {
				return nil // dial says where the routers are
			}
			var items []string
			for _, a := range l.Listen {
				items = append(items, a.String())
			}
			return listNode(items)
		},
	}
}

// dialEntry is the routers to dial, each an IP address with a port (see
// parseDial), in place of listen. Absent, it is nil and prints nothing.
func dialEntry() entry[Listener] {
	return entry[Listener]{
		key: "dial", field: fieldOf(func(l *Listener) *[]netip.AddrPort { return &l.Dial }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			// Not nil, even when nothing decodes, so that Validate's error
			// is about dial, and not about a missing listen.
			l.Dial = []netip.AddrPort{}
			seen := map[netip.AddrPort]bool{}
			d.list(n, p, func(v *yaml.Node, p string) {
				s, ok := d.scalar(v, p, `a router's address such as "[2001:db8::1]:5000"`)
				if !ok {
					return
				}
				a, err := parseDial(s)
				if err != nil {
					d.fail(v, p, "%v", err)
					return
				}
				if seen[a] {
					d.fail(v, p, "%s is given twice; give each router once", a)
					return
				}
				seen[a] = true
				l.Dial = append(l.Dial, a)
			})
		},
		print: func(l *Listener) *yaml.Node {
			if len(l.Dial) == 0 {
				return nil
			}
			items := make([]string, len(l.Dial))
			for k, a := range l.Dial {
				items[k] = a.String()
			}
			return listNode(items)
		},
	}
}

// targetEntry is one address, or a list of them, each a leg with the
// listener's settings. A repeated --target is its list. Decoding sets
// Targets and Target both, so that a listener that has targets too
// (which is an error) is still consistent.
func targetEntry() entry[Listener] {
	return entry[Listener]{
		key: "target", field: fieldOf(func(l *Listener) *Target { return &l.Target }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			l.Targets, l.Target = nil, Target{}
			for _, t := range d.targetList(n, p) {
				g := defaultLeg()
				g.Target = t
				l.Targets = append(l.Targets, g)
			}
			if len(l.Targets) > 0 {
				l.Target = l.Targets[0].Target
			}
		},
		print: func(l *Listener) *yaml.Node {
			if !oneTarget(l) {
				return nil
			}
			return strNode(l.Target.String())
		},
	}
}

// targetsEntry is the list of legs, each a mapping of legSettings.
func targetsEntry() entry[Listener] {
	return entry[Listener]{
		key: "targets", field: fieldOf(func(l *Listener) *[]Leg { return &l.Targets }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			gs := legSettings()
			// Not nil, even when n is no list, so that Validate's error is
			// about targets, which has one already.
			l.Targets = []Leg{}
			if legs := decodeList(d, n, p, "targets", func(v *yaml.Node, p string, g *Leg) {
				gs.defaults(g)
				if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
					d.fail(v, p, "want a mapping such as {target: %q}, got %q", v.Value, v.Value)
					g.Target, _ = ParseTarget(v.Value) // not "missing" too
					return
				}
				gs.decode(d, v, p, g)
			}); legs != nil {
				l.Targets = legs
			}
			l.Target = Target{}
			if len(l.Targets) > 0 {
				l.Target = l.Targets[0].Target
			}
		},
		print: func(l *Listener) *yaml.Node {
			if oneTarget(l) || l.Pool != nil {
				return nil
			}
			gs := legSettings()
			n := &yaml.Node{Kind: yaml.SequenceNode}
			if len(l.Targets) == 0 {
				n.Style = yaml.FlowStyle
			}
			for k := range l.Targets {
				n.Content = append(n.Content, gs.print(&l.Targets[k]))
			}
			return n
		},
	}
}

// poolEntry is a listener's pool, a mapping of poolSettings. Absent, it
// is nil and prints nothing.
func poolEntry() entry[Listener] {
	return entry[Listener]{
		key: "pool", field: fieldOf(func(l *Listener) **Pool { return &l.Pool }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			ps := poolSettings()
			pl := &Pool{}
			ps.defaults(pl)
			l.Pool = pl
			if n.Kind != yaml.MappingNode {
				d.fail(n, p, `want a mapping such as {targets: ["collector:5000"]}, got %s`, kind(n))
				d.cover(p + ".targets") // not "missing" too
				return
			}
			ps.decode(d, n, p, pl)
		},
		print: func(l *Listener) *yaml.Node {
			if l.Pool == nil {
				return nil
			}
			return poolSettings().print(l.Pool)
		},
	}
}

// poolTargetsEntry is one address, or a list of them, each a target of
// the pool.
func poolTargetsEntry() entry[Pool] {
	return entry[Pool]{
		key: "targets", field: fieldOf(func(pl *Pool) *[]Target { return &pl.Targets }),
		decode: func(d *decoder, n *yaml.Node, p string, pl *Pool) {
			// Not nil, even when nothing decodes: an empty list is not a
			// missing one.
			pl.Targets = append([]Target{}, d.targetList(n, p)...)
		},
		print: func(pl *Pool) *yaml.Node {
			items := make([]string, len(pl.Targets))
			for k, t := range pl.Targets {
				items[k] = t.String()
			}
			return listNode(items)
		},
	}
}

// oneTarget reports whether l's targets print as target: one leg that
// has the listener's settings and the default buffer, as target gives.
// Every other list prints as targets, each leg spelled out.
func oneTarget(l *Listener) bool {
	return len(l.Targets) == 1 && l.Targets[0] == Leg{
		Target: l.Target, ProxyProtocol: l.ProxyProtocol, Buffer: DefaultBuffer, TransparentMark: l.TransparentMark,
	}
}

func legTargetEntry() entry[Leg] {
	return entry[Leg]{
		key: "target", field: fieldOf(func(g *Leg) *Target { return &g.Target }),
		decode: func(d *decoder, n *yaml.Node, p string, g *Leg) {
			if t, ok := d.target(n, p); ok {
				g.Target = t
			}
		},
		print: func(g *Leg) *yaml.Node { return strNode(g.Target.String()) },
	}
}

// proxyProtocolEntry is a header mode; def is empty for a leg's, which
// is the listener's unless set.
func proxyProtocolEntry[S any](def string, at func(*S) *ProxyProtocol) entry[S] {
	return entry[S]{
		key: "proxy_protocol", def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) {
			v, ok := d.scalar(n, p, "v2, v1, none or transparent")
			if !ok {
				return
			}
			pp, err := ParseProxyProtocol(v)
			if err != nil {
				d.fail(n, p, "%v", err)
				return
			}
			*at(s) = pp
		},
		print: func(s *S) *yaml.Node { return strNode(string(*at(s))) },
	}
}

func byteSizeEntry[S any](key, def string, at func(*S) *ByteSize) entry[S] {
	return entry[S]{
		key: key, def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) { d.byteSize(n, p, at(s)) },
		print: func(s *S) *yaml.Node {
			v := at(s).String()
			if _, err := strconv.ParseInt(v, 10, 64); err == nil {
				return intNode(int64(*at(s))) // bytes alone: a number, unquoted
			}
			return strNode(v)
		},
	}
}

// maxConnectionsEntry is a bound, or none. A bound of 0 would refuse every
// connection, which no one means: it is an error that says to write none.
func maxConnectionsEntry() entry[Listener] {
	return entry[Listener]{
		key: "max_connections", def: none, field: fieldOf(func(l *Listener) *int { return &l.MaxConnections }),
		decode: func(d *decoder, n *yaml.Node, p string, l *Listener) {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && n.Value == none {
				l.MaxConnections = 0
				return
			}
			v, ok := d.wholeNumber(n, p, "a whole number or none")
			if !ok {
				return
			}
			if v == 0 {
				d.fail(n, p, "0 would refuse every connection (write none for no bound)")
				return
			}
			l.MaxConnections = v
		},
		print: func(l *Listener) *yaml.Node {
			if l.MaxConnections == 0 {
				return strNode(none)
			}
			return intNode(int64(l.MaxConnections))
		},
	}
}

// transparentMarkEntry is an SO_MARK; def is empty for a leg's, which is
// the listener's unless set.
func transparentMarkEntry[S any](def string, at func(*S) *uint32) entry[S] {
	return entry[S]{
		key: "transparent_mark", def: def, field: fieldOf(at),
		decode: func(d *decoder, n *yaml.Node, p string, s *S) {
			v, ok := d.wholeNumber(n, p, "a whole number")
			if !ok {
				return
			}
			if v < 1 || int64(v) > math.MaxUint32 {
				d.fail(n, p, "must be 1-4294967295, got %d", v)
				return
			}
			*at(s) = uint32(v)
		},
		print: func(s *S) *yaml.Node { return intNode(int64(*at(s))) },
	}
}
