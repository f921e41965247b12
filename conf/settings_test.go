package conf

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestEverySettingDescribed fails when a field of Config or Listener (or
// of the structs they hold) has no entry in the description, or more than
// one: decoding, defaults, printing and the flags would all miss it.
func TestEverySettingDescribed(t *testing.T) {
	nested := map[reflect.Type]bool{
		reflect.TypeFor[Log]():       true,
		reflect.TypeFor[Splice]():    true,
		reflect.TypeFor[KeepAlive](): true,
	}
	// leaves lists the fields of v, by name, descending into nested.
	var leaves func(v reflect.Value, name string, out map[string]reflect.Value)
	leaves = func(v reflect.Value, name string, out map[string]reflect.Value) {
		for i := range v.NumField() {
			f, sf := v.Field(i), v.Type().Field(i)
			if nested[sf.Type] {
				leaves(f, name+sf.Name+".", out)
				continue
			}
			out[name+sf.Name] = f.Addr()
		}
	}
	check := func(t *testing.T, root reflect.Value, fields []any) {
		want := map[string]reflect.Value{}
		leaves(root, "", want)
		for name, addr := range want {
			n := 0
			for _, f := range fields {
				fv := reflect.ValueOf(f)
				if fv.Pointer() == addr.Pointer() && fv.Type() == addr.Type() {
					n++
				}
			}
			if n != 1 {
				t.Errorf("field %s has %d entries in the description, want 1", name, n)
			}
		}
		if len(fields) != len(want) {
			t.Errorf("%d entries for %d fields", len(fields), len(want))
		}
	}
	t.Run("Config", func(t *testing.T) {
		var c Config
		var fields []any
		for _, e := range configSettings() {
			fields = append(fields, e.field(&c))
		}
		check(t, reflect.ValueOf(&c).Elem(), fields)
	})
	t.Run("Listener", func(t *testing.T) {
		var l Listener
		var fields []any
		for _, e := range listenerSettings() {
			fields = append(fields, e.field(&l))
		}
		check(t, reflect.ValueOf(&l).Elem(), fields)
	})
	t.Run("Leg", func(t *testing.T) {
		var g Leg
		var fields []any
		for _, e := range legSettings() {
			fields = append(fields, e.field(&g))
		}
		check(t, reflect.ValueOf(&g).Elem(), fields)
	})
	t.Run("Pool", func(t *testing.T) {
		var pl Pool
		var fields []any
		for _, e := range poolSettings() {
			fields = append(fields, e.field(&pl))
		}
		check(t, reflect.ValueOf(&pl).Elem(), fields)
	})
}

// TestDefaultsAreData checks that the defaults a file gets for absent
// keys are the documented ones, and that ApplyDefaults, for a Config built
// in Go, arrives at the same place.
func TestDefaultsAreData(t *testing.T) {
	c, err := Parse([]byte("listeners: [{listen: ':5000', target: 'c:1'}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listeners: []Listener{{
			Name:               "default",
			Listen:             []netip.AddrPort{netip.MustParseAddrPort("[::]:5000")},
			Targets:            []Leg{{Target: Target{Host: "c", Port: 1}, ProxyProtocol: ProxyV2, Buffer: 4 << 20, TransparentMark: 1}},
			Target:             Target{Host: "c", Port: 1},
			ProxyProtocol:      ProxyV2,
			ConnectTimeout:     5 * time.Second,
			ProxyHeaderTimeout: 5 * time.Second,
			TransparentMark:    1,
			KeepAlive:          KeepAlive{Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9},
			Log:                Log{Level: "info", Format: "json"},
			BMPTimeout:         10 * time.Second,
		}},
		TransparentTable: 100,
		DrainTimeout:     5 * time.Second,
		ResyncMemory:     1 << 30,
		Log:              Log{Level: "info", Format: "json"},
		Splice:           Splice{MaxPipes: 1024},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("Parse gave\n%+v\nwant\n%+v", *c, want)
	}
	built := Config{Listeners: []Listener{{Listen: want.Listeners[0].Listen, Target: want.Listeners[0].Target}}}
	built.ApplyDefaults()
	want.DrainTimeout = 0 // in Go, zero is "close at once", not unset
	if !reflect.DeepEqual(built, want) {
		t.Fatalf("ApplyDefaults gave\n%+v\nwant\n%+v", built, want)
	}
}

// TestZeroMeansZero: a key that is present is taken as written, a zero
// included; only an absent key gets the default.
func TestZeroMeansZero(t *testing.T) {
	const listener = "listeners: [{listen: ':5000', target: 'c:1'}]\n"
	tests := []struct {
		name, in string
		check    func(*Config) bool
		wantErr  string
	}{
		{name: "drain_timeout absent", in: listener, check: func(c *Config) bool { return c.DrainTimeout == 5*time.Second }},
		{name: "drain_timeout 0s", in: "drain_timeout: 0s\n" + listener, check: func(c *Config) bool { return c.DrainTimeout == 0 }},
		{name: "drain_timeout negative", in: "drain_timeout: -1s\n" + listener,
			wantErr: `line 1: drain_timeout: must not be negative, got -1s (0s closes connections at once)`},
		{name: "max_connections none", in: "listeners: [{listen: ':5000', target: 'c:1', max_connections: none}]\n",
			check: func(c *Config) bool { return c.Listeners[0].MaxConnections == 0 }},
		{name: "max_connections 0", in: "listeners: [{listen: ':5000', target: 'c:1', max_connections: 0}]\n",
			wantErr: `line 1: listeners[0].max_connections: 0 would refuse every connection (write none for no bound)`},
		{name: "connect_timeout 0s", in: "listeners: [{listen: ':5000', target: 'c:1', connect_timeout: 0s}]\n",
			wantErr: `line 1: listeners[0].connect_timeout: must be positive, got 0s`},
		{name: "bmp_timeout 0s", in: "listeners: [{listen: ':5000', target: 'c:1', bmp_timeout: 0s}]\n",
			wantErr: `line 1: listeners[0].bmp_timeout: must be positive, got 0s`},
		{name: "transparent_mark 0", in: "listeners: [{listen: ':5000', target: 'c:1', transparent_mark: 0}]\n",
			wantErr: `line 1: listeners[0].transparent_mark: must be 1-4294967295, got 0`},
		{name: "max_pipes 0", in: "splice: {max_pipes: 0}\n" + listener,
			wantErr: `line 1: splice.max_pipes: must be positive, got 0`},
		{name: "log level empty", in: "log: {level: ''}\n" + listener,
			wantErr: `line 1: log.level: unknown level "" (want one of trace, debug, info, warn, error, disabled)`},
		{name: "keepalive off keeps its values", in: "listeners: [{listen: ':5000', target: 'c:1', tcp_keepalive: false}]\n",
			check: func(c *Config) bool {
				return c.Listeners[0].KeepAlive == KeepAlive{Disabled: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}
			}},
		{name: "admin none", in: "admin: none\n" + listener, check: func(c *Config) bool { return !c.Admin.IsValid() }},
		{name: "transparent_setup none", in: "transparent_setup: none\n" + listener, check: func(c *Config) bool { return c.TransparentSetup == "" }},
		{name: "admin_token_file", in: "admin_token_file: /etc/bmpproxy/token\n" + listener,
			check: func(c *Config) bool { return c.AdminTokenFile == "/etc/bmpproxy/token" }},
		{name: "admin_token_file none", in: "admin_token_file: none\n" + listener, check: func(c *Config) bool { return c.AdminTokenFile == "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("Parse gave %+v", c)
			}
		})
	}
}

// TestBMPNotFromName: the pre-check is on only where bmp: true says so,
// whatever the listener is called.
func TestBMPNotFromName(t *testing.T) {
	c, err := Parse([]byte(yml(`
listeners:
	- name: bmp
		listen: "[::]:5000"
		target: collector:5000
	- name: routers
		listen: "[::]:5001"
		target: collector:5001
		bmp: true
`)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listeners[0].BMP || !c.Listeners[1].BMP {
		t.Fatalf("bmp: listener %q %v, listener %q %v; want false, true",
			c.Listeners[0].Name, c.Listeners[0].BMP, c.Listeners[1].Name, c.Listeners[1].BMP)
	}
}

// TestFlags checks that a flag decodes as its key does in a file, with
// the same words for a bad value, and starts from the same defaults.
func TestFlags(t *testing.T) {
	byName := map[string]Flag{}
	for _, f := range Flags() {
		byName[f.Name] = f
	}
	set := func(t *testing.T, c *Config, name string, values ...string) error {
		t.Helper()
		f, ok := byName[name]
		if !ok {
			t.Fatalf("no flag --%s", name)
		}
		return f.Set(c, values...)
	}

	c := FlagConfig()
	want := Default()
	want.Listeners = []Listener{DefaultListener()}
	want.Listeners[0].Listen = []netip.AddrPort{netip.MustParseAddrPort("[::]:5000")}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("FlagConfig() =\n%+v\nwant\n%+v", c, want)
	}

	for _, tt := range []struct {
		flag    string
		values  []string
		wantErr string
	}{
		{"connect-timeout", []string{"5"}, `invalid duration "5" (want a number with a unit, such as "5s" or "1m30s")`},
		{"drain-timeout", []string{"soon"}, `invalid duration "soon" (want a number with a unit, such as "5s" or "1m30s")`},
		{"max-pipes", []string{"many"}, `want a whole number, got "many"`},
		{"splice", []string{"maybe"}, `want true or false, got "maybe"`},
		{"bmp", []string{"1"}, `want true or false, got "1"`},
		{"target", []string{"collector"}, `missing port in "collector"`},
		{"target", []string{"c:1", "b:2", "C:1"}, `C:1 is given twice; give each target once`},
		{"resync", []string{"1"}, `want true or false, got "1"`},
		{"resync-memory", []string{"4MB"}, `invalid size "4MB" (write 4MiB: sizes count in powers of 1024)`},
		{"resync-memory", []string{"lots"}, `invalid size "lots" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{"listen", []string{"[::]:1", "localhost:2"}, `"localhost" is not an IP address in "localhost:2" (listen on an address, not a name)`},
		{"proxy-protocol", []string{"v3"}, `unknown proxy protocol "v3" (want v2, v1, none or transparent)`},
		{"admin-listen", []string{"admin:9180"}, `"admin" is not an IP address in "admin:9180" (listen on an address, not a name)`},
	} {
		err := set(t, FlagConfig(), tt.flag, tt.values...)
		if err == nil || err.Error() != tt.wantErr {
			t.Errorf("--%s %q: %v, want %q", tt.flag, tt.values, err, tt.wantErr)
		}
	}

	c = FlagConfig()
	for _, s := range [][]string{
		{"drain-timeout", "0s"},
		{"splice", "false"},
		{"max-pipes", "8"},
		{"listen", "198.51.100.1:5000", "[2001:db8::1]:5000"},
		{"target", "[2001:db8::2]:5000", "collector:5000"},
		{"bmp", "true"},
		{"resync", "true"},
		{"resync-memory", "64MiB"},
		{"admin-listen", ""},
		{"admin-token-file", "/run/token"},
		{"log-level", "debug"},
		{"proxy-protocol", "none"},
	} {
		if err := set(t, c, s[0], s[1:]...); err != nil {
			t.Fatalf("--%s %q: %v", s[0], s[1:], err)
		}
	}
	if err := c.Complete(); err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if c.DrainTimeout != 0 || !c.Splice.Disabled || c.Splice.MaxPipes != 8 || c.Admin.IsValid() ||
		c.AdminTokenFile != "/run/token" || c.Log.Level != "debug" || l.Log.Level != "debug" ||
		len(l.Listen) != 2 || l.Listen[1].String() != "[2001:db8::1]:5000" || l.Target.Host != "2001:db8::2" ||
		!l.BMP || l.ProxyProtocol != ProxyNone || l.Name != "default" || !l.Resync || c.ResyncMemory != 64*MiB {
		t.Fatalf("flags gave %+v", c)
	}
	// Each --target is a leg, in order, with the listener's settings,
	// whatever came after it.
	wantLegs := []Leg{
		{Target: Target{Host: "2001:db8::2", Port: 5000}, ProxyProtocol: ProxyNone, Buffer: DefaultBuffer, TransparentMark: 1},
		{Target: Target{Host: "collector", Port: 5000}, ProxyProtocol: ProxyNone, Buffer: DefaultBuffer, TransparentMark: 1},
	}
	if !reflect.DeepEqual(l.Targets, wantLegs) {
		t.Fatalf("--target gave %+v, want %+v", l.Targets, wantLegs)
	}

	// Check finds what Set finds, and what only Validate would.
	for _, tt := range []struct {
		flag    string
		values  []string
		wantErr string
	}{
		{"connect-timeout", []string{"5"}, `invalid duration "5" (want a number with a unit, such as "5s" or "1m30s")`},
		{"connect-timeout", []string{"0s"}, `must be positive, got 0s`},
		{"log-level", []string{"loud"}, `unknown level "loud" (want one of trace, debug, info, warn, error, disabled)`},
		{"listen", []string{"[::]:1", "[::]:1"}, `[::]:1 is already used by listeners[0].listen[0]`},
		{"log-level", []string{"debug"}, ""},
		{"target", []string{"c:1"}, ""},
		{"target", []string{"c:1", "c:2"}, ""},
		{"resync", []string{"true"}, `refused without bmp: true; add bmp: true (resync keeps each router's BMP state, which only a BMP listener reads)`},
		{"resync-memory", []string{"1MiB"}, `must be at least 16MiB, got 1MiB (the resync state is always bounded)`},
		{"resync-memory", []string{"16MiB"}, ""},
	} {
		err := byName[tt.flag].Check(tt.values...)
		if got := fmt.Sprint(err); tt.wantErr == "" && err != nil || tt.wantErr != "" && got != tt.wantErr {
			t.Errorf("Check --%s %q: %v, want %q", tt.flag, tt.values, err, tt.wantErr)
		}
	}

	for _, f := range Flags() {
		if f.Path == "" || f.EnvVar != "BMPPROXY_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")) {
			t.Errorf("--%s: path %q, env %q", f.Name, f.Path, f.EnvVar)
		}
	}
}

// TestRoundTrip is the property that printing is exact: over generated
// valid configurations, every field set, parsing the printout gives the
// configuration back, and printing that gives the same text.
func TestRoundTrip(t *testing.T) {
	for seed := range uint64(2000) {
		roundTrip(t, seed, seed*7919+1)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

func FuzzRoundTrip(f *testing.F) {
	for i := range uint64(8) {
		f.Add(i, i+1)
	}
	f.Fuzz(roundTrip)
}

func roundTrip(t *testing.T, seed1, seed2 uint64) {
	t.Helper()
	c := genConfig(rand.New(rand.NewPCG(seed1, seed2)))
	if err := c.Validate(); err != nil {
		t.Fatalf("generated an invalid config: %v\n%+v", err, c)
	}
	checkRoundTrip(t, c)
}

// checkRoundTrip checks that c prints to a file that parses to c again,
// and that printing that gives the same text.
func checkRoundTrip(t *testing.T, c *Config) {
	t.Helper()
	text, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(text)
	if err != nil {
		t.Fatalf("the printout does not parse: %v\n%s", err, text)
	}
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("Parse(YAML(c)) differs from c:\n%s\ngot  %+v\nwant %+v", text, back, c)
	}
	again, err := back.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, text) {
		t.Fatalf("printing the parsed printout gave other text:\n%s\nthen\n%s", text, again)
	}
}

// genConfig returns a valid, complete configuration (derived defaults
// filled in, as Parse gives them) with every field drawn from r.
func genConfig(r *rand.Rand) *Config {
	g := gen{r: r, usedPorts: map[uint16]bool{}}
	c := &Config{
		DrainTimeout: g.duration(0),
		ResyncMemory: g.size(MinResyncMemory, 1<<50),
		Log:          g.log(),
		Splice:       Splice{Disabled: r.IntN(2) == 0, MaxPipes: 1 + r.IntN(100000)},
	}
	if r.IntN(2) == 0 {
		c.Admin = netip.AddrPortFrom(g.addr(), g.port())
	}
	if r.IntN(2) == 0 {
		c.AdminTokenFile = g.pick("/etc/bmpproxy/admin.token", "token", "/run/secrets/bmpproxy admin", "./none", "C:\\token", "123")
	}
	transparent := r.IntN(3) == 0
	mark := uint32(1 + r.Uint32N(1<<31))
	if r.IntN(4) == 0 {
		mark = 0xffffffff
	}
	if transparent {
		c.TransparentSetup = g.pick("loopback", "namespace", "docker")
		c.TransparentTable = 1 + r.IntN(252)
	} else {
		c.TransparentTable = r.IntN(1000) // unused without transparent_setup: any whole number
	}
	n := 1 + r.IntN(4)
	names := map[string]bool{}
	for i := range n {
		l := Listener{
			Name:               g.name(names),
			ProxyProtocol:      ProxyProtocol(g.pick("v2", "v1", "none", "transparent")),
			ConnectTimeout:     g.duration(1),
			Allow:              g.prefixes(),
			AcceptProxyFrom:    g.prefixes(),
			ProxyHeaderTimeout: g.duration(0),
			TransparentMark:    uint32(1 + r.Uint32N(1000)),
			KeepAlive:          KeepAlive{Disabled: r.IntN(3) == 0},
			Log:                g.log(),
			BMP:                r.IntN(2) == 0,
			BMPTimeout:         g.duration(1),
		}
		if transparent {
			if i == 0 {
				l.ProxyProtocol = ProxyTransparent
			}
			l.TransparentMark = mark
		}
		l.Resync = l.BMP && r.IntN(2) == 0
		if r.IntN(4) == 0 {
			// A pool in place of targets: Targets empty, Target zero.
			l.Pool = g.pool(l)
			if transparent && i == 0 {
				l.Pool.ProxyProtocol = ProxyTransparent
			}
			if transparent && l.Pool.ProxyProtocol == ProxyTransparent {
				l.Pool.TransparentMark = mark
			}
		} else {
			l.Targets = g.legs(l)
			if transparent && i == 0 {
				l.Targets[0].ProxyProtocol = ProxyTransparent
			}
			for k := range l.Targets {
				if transparent && l.Targets[k].ProxyProtocol == ProxyTransparent {
					l.Targets[k].TransparentMark = mark
				}
			}
			l.Target = l.Targets[0].Target
		}
		dial := r.IntN(4) == 0
		if dial {
			// Routers to dial in place of listen; neither allow nor
			// accept_proxy_from goes with them.
			l.Allow, l.AcceptProxyFrom = nil, nil
		}
		if len(l.AcceptProxyFrom) > 0 {
			l.ProxyHeaderTimeout = MinProxyHeaderTimeout + g.duration(0)
		}
		if r.IntN(2) == 0 {
			l.MaxConnections = 1 + r.IntN(1<<20)
		}
		if ka := &l.KeepAlive; !ka.Disabled || r.IntN(2) == 0 {
			ka.Idle, ka.Interval, ka.Count = time.Second+g.duration(0), time.Second+g.duration(0), 1+r.IntN(127)
		}
		for range 1 + r.IntN(3) {
			if dial {
				// Unique ports make unique addresses; a dial address is
				// no port of this host, so any would do.
				l.Dial = append(l.Dial, netip.AddrPortFrom(g.routerAddr(), g.port()))
			} else {
				l.Listen = append(l.Listen, netip.AddrPortFrom(g.addr(), g.port()))
			}
		}
		c.Listeners = append(c.Listeners, l)
	}
	return c
}

type gen struct {
	r         *rand.Rand
	usedPorts map[uint16]bool
}

func (g gen) pick(s ...string) string { return s[g.r.IntN(len(s))] }

// port is a port no other address of the configuration has, so that no two
// addresses clash.
func (g gen) port() uint16 {
	for {
		p := uint16(1 + g.r.IntN(65535))
		if !g.usedPorts[p] {
			g.usedPorts[p] = true
			return p
		}
	}
}

func (g gen) addr() netip.Addr {
	switch g.r.IntN(6) {
	case 0:
		return netip.IPv6Unspecified()
	case 1:
		return netip.IPv4Unspecified()
	case 2:
		return netip.MustParseAddr("fe80::1").WithZone(g.pick("eth0", "lo", "br-1"))
	case 3:
		b := [4]byte{198, 51, 100, byte(g.r.IntN(256))}
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	for i := 4; i < 16; i++ {
		if g.r.IntN(3) == 0 {
			b[i] = byte(g.r.IntN(256))
		}
	}
	return netip.AddrFrom16(b)
}

// routerAddr is an address a router may have: any of addr's but the
// unspecified ones.
func (g gen) routerAddr() netip.Addr {
	for {
		if a := g.addr(); !a.IsUnspecified() {
			return a
		}
	}
}

func (g gen) prefixes() Prefixes {
	var ps Prefixes
	for range g.r.IntN(4) {
		a := g.addr().WithZone("")
		if a.Is4() && g.r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{203, 0, 113, byte(g.r.IntN(256))})
		}
		ps = append(ps, netip.PrefixFrom(a, g.r.IntN(a.BitLen()+1)).Masked())
	}
	return ps
}

// legs are one to three targets, none the same, each with the listener's
// settings or its own; one in two listeners has a single leg with the
// listener's, which prints as target.
func (g gen) legs(l Listener) []Leg {
	plain := func(t Target) Leg {
		return Leg{Target: t, ProxyProtocol: l.ProxyProtocol, Buffer: DefaultBuffer, TransparentMark: l.TransparentMark}
	}
	if g.r.IntN(2) == 0 {
		return []Leg{plain(g.target())}
	}
	var legs []Leg
	seen := map[Target]bool{}
	for range 1 + g.r.IntN(3) {
		t := g.target()
		if seen[t.key()] {
			continue
		}
		seen[t.key()] = true
		leg := plain(t)
		if g.r.IntN(2) == 0 {
			leg.ProxyProtocol = ProxyProtocol(g.pick("v2", "v1", "none", "transparent"))
		}
		if g.r.IntN(2) == 0 {
			leg.Buffer = g.size(MinBuffer, MaxBuffer)
		}
		if g.r.IntN(2) == 0 {
			leg.TransparentMark = 1 + g.r.Uint32N(1<<31)
		}
		legs = append(legs, leg)
	}
	return legs
}

// pool is one to three targets, none the same, and each setting the
// listener's or the default, or its own; rebalance only with resync.
func (g gen) pool(l Listener) *Pool {
	pl := &Pool{
		ProxyProtocol: l.ProxyProtocol, Buffer: DefaultBuffer, TransparentMark: l.TransparentMark,
		HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown,
	}
	seen := map[Target]bool{}
	for range 1 + g.r.IntN(3) {
		if t := g.target(); !seen[t.key()] {
			seen[t.key()] = true
			pl.Targets = append(pl.Targets, t)
		}
	}
	if g.r.IntN(2) == 0 {
		pl.ProxyProtocol = ProxyProtocol(g.pick("v2", "v1", "none", "transparent"))
	}
	if g.r.IntN(2) == 0 {
		pl.Buffer = g.size(MinBuffer, MaxBuffer)
	}
	if g.r.IntN(2) == 0 {
		pl.TransparentMark = 1 + g.r.Uint32N(1<<31)
	}
	if g.r.IntN(2) == 0 {
		pl.HealthInterval = g.duration(MinPoolInterval)
	}
	if g.r.IntN(2) == 0 {
		pl.ResolveInterval = g.duration(MinPoolInterval)
	}
	if g.r.IntN(2) == 0 {
		pl.HoldDown = g.duration(MinPoolInterval)
	}
	pl.Rebalance = l.Resync && g.r.IntN(2) == 0
	return pl
}

// size is lo to hi: a whole number of some unit, or any number of bytes.
func (g gen) size(lo, hi ByteSize) ByteSize {
	units := []ByteSize{1, KiB, MiB, GiB, TiB}
	u := units[g.r.IntN(len(units))]
	if u > hi {
		u = 1
	}
	n := ByteSize(g.r.Int64N(int64(hi/u)+1)) * u
	if g.r.IntN(8) == 0 {
		n = lo
	}
	return min(max(n, lo), hi)
}

func (g gen) target() Target {
	p := uint16(1 + g.r.IntN(65535))
	switch g.r.IntN(4) {
	case 0:
		return Target{Host: g.addr().String(), Port: p}
	case 1:
		return Target{Host: "198.51.100.2", Port: p}
	}
	return Target{Host: g.pick("collector", "openbmp-aio", "a-b.example.", "_bmp._tcp.example", "123", "1.2.3", "x"), Port: p}
}

// name is a unique name; the tricky ones are YAML's: numbers, booleans,
// null, indicators, quotes, spaces, newlines.
func (g gen) name(used map[string]bool) string {
	for {
		var s string
		if g.r.IntN(2) == 0 {
			s = g.pick("bmp", "rest", "null", "~", "123", "0x1f", "true", "no", "none", "a: b", "#c", "- x", "[v]", "{m}",
				"'q'", `"d"`, " lead", "trail ", "tab\there", "two\nlines", "é", "路由器", "*alias", "&anchor", "!tag", "%", "@", "`")
		} else {
			const runes = "abcXYZ019 -_:#'\"[]{},&*!|>%@`é\t"
			n := 1 + g.r.IntN(12)
			var b strings.Builder
			for range n {
				b.WriteRune([]rune(runes)[g.r.IntN(len([]rune(runes)))])
			}
			s = b.String()
		}
		if !used[s] {
			used[s] = true
			return s
		}
	}
}

// duration is at least min: a whole number of hours, minutes, seconds or
// milliseconds, or any number of nanoseconds.
func (g gen) duration(min time.Duration) time.Duration {
	units := []time.Duration{time.Nanosecond, time.Microsecond, time.Millisecond, time.Second, time.Minute, time.Hour}
	d := time.Duration(g.r.IntN(100000)) * units[g.r.IntN(len(units))]
	if g.r.IntN(8) == 0 {
		d = 0
	}
	return max(d, min)
}

func (g gen) log() Log {
	return Log{Level: g.pick(LevelNames()...), Format: g.pick("json", "console")}
}

// TestGenConfigCoversEveryField makes sure that the generator sets every
// setting somewhere over the seeds TestRoundTrip uses, so that the
// property covers it.
func TestGenConfigCoversEveryField(t *testing.T) {
	set := map[string]bool{}
	for seed := range uint64(200) {
		c := genConfig(rand.New(rand.NewPCG(seed, seed*7919+1)))
		for _, e := range configSettings() {
			if !reflect.ValueOf(e.field(c)).Elem().IsZero() {
				set[e.key] = true
			}
		}
		for i := range c.Listeners {
			l := &c.Listeners[i]
			for _, e := range listenerSettings() {
				if !reflect.ValueOf(e.field(l)).Elem().IsZero() {
					set["listeners."+e.key] = true
				}
			}
			if !oneTarget(l) && l.Pool == nil {
				set["listeners.targets (printed)"] = true
			}
			if pl := l.Pool; pl != nil {
				// A pool's own setting: one that differs from what it
				// would inherit or default to; targets always.
				inherited := Pool{
					Targets: pl.Targets, ProxyProtocol: l.ProxyProtocol, Buffer: DefaultBuffer, TransparentMark: l.TransparentMark,
					HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown,
				}
				for _, e := range poolSettings() {
					if !reflect.DeepEqual(e.field(pl), e.field(&inherited)) || e.key == "targets" {
						set["listeners.pool."+e.key] = true
					}
				}
			}
			for k := range l.Targets {
				g := &l.Targets[k]
				for _, e := range legSettings() {
					// A leg's own setting: one that differs from what it
					// would inherit or default to.
					inherited := Leg{Target: g.Target, ProxyProtocol: l.ProxyProtocol, Buffer: DefaultBuffer, TransparentMark: l.TransparentMark}
					if !reflect.DeepEqual(e.field(g), e.field(&inherited)) || e.key == "target" {
						set["listeners.targets."+e.key] = true
					}
				}
			}
		}
	}
	var missing []string
	for _, e := range configSettings() {
		if !set[e.key] {
			missing = append(missing, e.key)
		}
	}
	for _, e := range listenerSettings() {
		if !set["listeners."+e.key] {
			missing = append(missing, "listeners."+e.key)
		}
	}
	for _, e := range legSettings() {
		if !set["listeners.targets."+e.key] {
			missing = append(missing, "listeners.targets."+e.key)
		}
	}
	for _, e := range poolSettings() {
		if !set["listeners.pool."+e.key] {
			missing = append(missing, "listeners.pool."+e.key)
		}
	}
	if !set["listeners.targets (printed)"] {
		missing = append(missing, "listeners.targets (printed)")
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Fatalf("the generator never sets %v", missing)
	}
}
