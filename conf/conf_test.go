package conf

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "[::]:5000", want: "[::]:5000"},
		{in: ":5000", want: "[::]:5000"},
		{in: "0.0.0.0:5000", want: "0.0.0.0:5000"},
		{in: "198.51.100.1:0", want: "198.51.100.1:0"},
		{in: "[2001:db8::1]:5000", want: "[2001:db8::1]:5000"},
		{in: "[::ffff:198.51.100.1]:5000", want: "198.51.100.1:5000"},
		{in: "[fe80::1%eth0]:5000", want: "[fe80::1%eth0]:5000"},
		{in: "localhost:5000", wantErr: `"localhost" is not an IP address in "localhost:5000" (listen on an address, not a name)`},
		{in: "198.51.100.1", wantErr: `missing port in "198.51.100.1"`},
		{in: "[::]:65536", wantErr: `invalid port "65536" in "[::]:65536"`},
		{in: "[::]:", wantErr: `missing port in "[::]:"`},
		{in: "[::]:http", wantErr: `invalid port "http" in "[::]:http"`},
		{in: "::1:5001", wantErr: `too many colons in "::1:5001" (write an IPv6 address with a port in brackets: "[::1]:5001")`},
		{in: "2001:db8::1:5000", wantErr: `too many colons in "2001:db8::1:5000" (write an IPv6 address with a port in brackets: "[2001:db8::1]:5000")`},
		{in: "fe80::1%eth0:5000", wantErr: `too many colons in "fe80::1%eth0:5000" (write an IPv6 address with a port in brackets: "[fe80::1%eth0]:5000")`},
		{in: "2001:db8::", wantErr: `too many colons in "2001:db8::" (an IPv6 address needs brackets and a port: "[2001:db8::]:PORT")`},
		{in: "a:b:c", wantErr: `too many colons in "a:b:c"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseListen(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("= %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "collector:5000", want: Target{Host: "collector", Port: 5000}},
		{in: "openbmp.example.:5000", want: Target{Host: "openbmp.example.", Port: 5000}},
		{in: "198.51.100.2:5000", want: Target{Host: "198.51.100.2", Port: 5000}},
		{in: "[2001:db8::2]:5000", want: Target{Host: "2001:db8::2", Port: 5000}},
		{in: "[::ffff:198.51.100.2]:5000", want: Target{Host: "198.51.100.2", Port: 5000}},
		{in: "collector", wantErr: `missing port in "collector"`},
		{in: ":5000", wantErr: `missing host in ":5000"`},
		{in: "collector:0", wantErr: `port 0 in "collector:0": a target needs a real port`},
		{in: "collector:99999", wantErr: `invalid port "99999" in "collector:99999"`},
		{in: "bad host:1", wantErr: `invalid host "bad host" in "bad host:1"`},
		{in: "a..b:1", wantErr: `invalid host "a..b" in "a..b:1"`},
		{in: "::1:5001", wantErr: `too many colons in "::1:5001" (write an IPv6 address with a port in brackets: "[::1]:5001")`},
		{in: "::ffff:198.51.100.2:5000", wantErr: `too many colons in "::ffff:198.51.100.2:5000" (write an IPv6 address with a port in brackets: "[::ffff:198.51.100.2]:5000")`},
		{in: "2001:db8::2", wantErr: `too many colons in "2001:db8::2" (an IPv6 address needs brackets and a port: "[2001:db8::2]:PORT")`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTarget(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("= %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if s := (Target{Host: "2001:db8::2", Port: 5000}).String(); s != "[2001:db8::2]:5000" {
		t.Errorf("String() = %q", s)
	}
}

func TestDefaultsAndValidate(t *testing.T) {
	ap := netip.MustParseAddrPort
	c := Config{Listeners: []Listener{{Listen: []netip.AddrPort{ap("[::]:5000")}, Target: Target{Host: "c", Port: 5000}}}}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if l.Name != "default" || l.ProxyProtocol != ProxyV2 || l.ConnectTimeout != DefaultConnectTimeout ||
		c.DrainTimeout != 0 || c.Splice.MaxPipes != DefaultMaxPipes || c.Log.Level != "info" || c.Log.Format != "json" {
		t.Fatalf("defaults not applied: %+v", c)
	}

	bad := Config{
		Listeners: []Listener{
			{Name: "bmp", Listen: []netip.AddrPort{ap("[::]:5000"), ap("[::]:5000")}, ProxyProtocol: "v9", ConnectTimeout: -time.Second},
			{Name: "bmp"},
		},
		Log:    Log{Level: "loud", Format: "xml"},
		Splice: Splice{MaxPipes: -1},
	}
	bad.ApplyDefaults()
	want := `log.format: unknown format "xml" (want json or console)
log.level: unknown level "loud" (want one of trace, debug, info, warn, error, disabled)
splice.max_pipes: must be positive, got -1
listeners[0].listen[1]: [::]:5000 is already used by listeners[0].listen[0]
listeners[0].target: missing (a listener needs target, targets or pool)
listeners[0].proxy_protocol: unknown proxy protocol "v9" (want v2, v1, none or transparent)
listeners[0].connect_timeout: must be positive, got -1s
listeners[1].name: "bmp" is already used by listeners[0]
listeners[1].listen: at least one address is required
listeners[1].target: missing (a listener needs target, targets or pool)`
	if err := bad.Validate(); err == nil || err.Error() != want {
		t.Fatalf("Validate() =\n%v\nwant\n%s", err, want)
	}
	if err := Default().Validate(); err == nil || err.Error() != "listeners: at least one listener is required" {
		t.Fatalf("empty config: %v", err)
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    ByteSize
		print   string
		wantErr string
	}{
		{in: "4MiB", want: 4 << 20, print: "4MiB"},
		{in: "512KiB", want: 512 << 10, print: "512KiB"},
		{in: "1GiB", want: 1 << 30, print: "1GiB"},
		{in: "2TiB", want: 2 << 40, print: "2TiB"},
		{in: "1048576", want: 1 << 20, print: "1MiB"},
		{in: "65537", want: 65537, print: "65537"},
		{in: "1024B", want: 1024, print: "1KiB"},
		{in: "4 MiB", want: 4 << 20, print: "4MiB"},
		{in: "1536MiB", want: 1536 << 20, print: "1536MiB"},
		{in: "0", want: 0, print: "0"},
		{in: "4MB", wantErr: `invalid size "4MB" (write 4MiB: sizes count in powers of 1024)`},
		{in: "4m", wantErr: `invalid size "4m" (write 4MiB: sizes count in powers of 1024)`},
		{in: "1gib", wantErr: `invalid size "1gib" (write 1GiB)`},
		{in: "1.5GiB", wantErr: `invalid size "1.5GiB" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{in: "-1", wantErr: `invalid size "-1" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{in: "MiB", wantErr: `invalid size "MiB" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{in: "4 apples", wantErr: `invalid size "4 apples" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{in: "", wantErr: `invalid size "" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{in: "9000000TiB", wantErr: `size "9000000TiB" is too large`},
		{in: "99999999999999999999", wantErr: `size "99999999999999999999" is too large`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || got.String() != tt.print {
				t.Fatalf("= %d (%s), %v; want %d (%s)", got, got, err, tt.want, tt.print)
			}
			if back, err := ParseByteSize(got.String()); err != nil || back != got {
				t.Fatalf("String %q parses to %d, %v", got.String(), back, err)
			}
		})
	}
}

// TestDefaultsLegs: in Go, a listener's Target alone is a list of one,
// and a leg's unset settings are the listener's; Validate finds a Target
// that is not the first of Targets.
func TestDefaultsLegs(t *testing.T) {
	ap := netip.MustParseAddrPort
	a, b := Target{Host: "a", Port: 1}, Target{Host: "2001:db8::20", Port: 5000}
	c := Config{Listeners: []Listener{
		{Name: "one", Listen: []netip.AddrPort{ap("[::]:5000")}, Target: a, ProxyProtocol: ProxyV1, TransparentMark: 7},
		{Name: "two", Listen: []netip.AddrPort{ap("[::]:5001")}, ProxyProtocol: ProxyNone,
			Targets: []Leg{{Target: a}, {Target: b, ProxyProtocol: ProxyTransparent, Buffer: 8 * MiB, TransparentMark: 9}}},
	}}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	one, two := c.Listeners[0], c.Listeners[1]
	if want := []Leg{{Target: a, ProxyProtocol: ProxyV1, Buffer: DefaultBuffer, TransparentMark: 7}}; !reflect.DeepEqual(one.Targets, want) {
		t.Errorf("one: targets %+v, want %+v", one.Targets, want)
	}
	want := []Leg{
		{Target: a, ProxyProtocol: ProxyNone, Buffer: DefaultBuffer, TransparentMark: DefaultTransparentMark},
		{Target: b, ProxyProtocol: ProxyTransparent, Buffer: 8 * MiB, TransparentMark: 9},
	}
	if !reflect.DeepEqual(two.Targets, want) || two.Target != a {
		t.Errorf("two: target %v, targets %+v, want %+v", two.Target, two.Targets, want)
	}
	if c.ResyncMemory != DefaultResyncMemory {
		t.Errorf("resync memory %s", c.ResyncMemory)
	}
	if m := c.TransparentMark(); m != 9 {
		t.Errorf("TransparentMark() = %d, want 9, the transparent leg's", m)
	}

	bad := c
	bad.Listeners = []Listener{c.Listeners[0], c.Listeners[1]}
	bad.Listeners[0].Target = b
	bad.Listeners[1].Targets = []Leg{want[0], {Target: Target{Host: "A", Port: 1}}, {}}
	bad.Listeners[1].Resync = true
	bad.ResyncMemory = 0
	wantErr := `resync_memory: must be at least 16MiB, got 0 (the resync state is always bounded)
listeners[0].target: [2001:db8::20]:5000, but targets[0] is a:1 (target is the first of targets)
listeners[1].targets[1]: A:1 is already listeners[1].targets[0]; list each target once
listeners[1].targets[1].proxy_protocol: unknown proxy protocol "" (want v2, v1, none or transparent)
listeners[1].targets[1].buffer: must be at least 64KiB and at most 1GiB, got 0
listeners[1].targets[1].transparent_mark: must be 1-4294967295, got 0
listeners[1].targets[2].target: missing
listeners[1].targets[2].proxy_protocol: unknown proxy protocol "" (want v2, v1, none or transparent)
listeners[1].targets[2].buffer: must be at least 64KiB and at most 1GiB, got 0
listeners[1].targets[2].transparent_mark: must be 1-4294967295, got 0
listeners[1].resync: refused without bmp: true; add bmp: true (resync keeps each router's BMP state, which only a BMP listener reads)`
	if err := bad.Validate(); err == nil || err.Error() != wantErr {
		t.Fatalf("Validate() =\n%v\nwant\n%s", err, wantErr)
	}
	bad.Listeners = []Listener{{Name: "x", Listen: one.Listen, Target: a}}
	bad.ResyncMemory = DefaultResyncMemory
	const first = `listeners[0].targets: missing, though target is a:1 (Complete or ApplyDefaults makes target a list of one)`
	if err := bad.Validate(); err == nil || strings.SplitN(err.Error(), "\n", 2)[0] != first {
		t.Fatalf("Validate() without ApplyDefaults = %v, want first %q", err, first)
	}
}

// TestDefaultsPoolAndDial: in Go, ApplyDefaults fills a pool's zero
// settings with the defaults and its unset ones with the listener's, as a
// file's absent keys get, invents no targets, and Validate finds what a
// file's decoder would.
func TestDefaultsPoolAndDial(t *testing.T) {
	ap := netip.MustParseAddrPort
	n := Target{Host: "collectors.bmp.svc", Port: 5000}
	c := Config{Listeners: []Listener{
		{Name: "routers", Listen: []netip.AddrPort{ap("[::]:5000")}, ProxyProtocol: ProxyNone, TransparentMark: 7,
			Pool: &Pool{Targets: []Target{n}}},
		{Name: "passive", Dial: []netip.AddrPort{ap("198.51.100.9:5000")}, Target: n},
	}}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := &Pool{Targets: []Target{n}, ProxyProtocol: ProxyNone, Buffer: DefaultBuffer, TransparentMark: 7,
		HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown}
	if l := c.Listeners[0]; !reflect.DeepEqual(l.Pool, want) || l.Targets != nil || !l.Target.IsZero() {
		t.Errorf("routers: pool %+v, target %v, targets %+v; want pool %+v and no target", l.Pool, l.Target, l.Targets, want)
	}
	parsed, err := Parse([]byte("listeners:\n  - {name: routers, listen: '[::]:5000', proxy_protocol: none, transparent_mark: 7, pool: {targets: 'collectors.bmp.svc:5000'}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed.Listeners[0].Pool, want) {
		t.Errorf("parsed pool %+v, want %+v", parsed.Listeners[0].Pool, want)
	}
	if l := c.Listeners[1]; l.Listen != nil || len(l.Targets) != 1 {
		t.Errorf("passive: listen %v, targets %+v", l.Listen, l.Targets)
	}

	bad := Config{Listeners: []Listener{
		{Name: "both", Listen: []netip.AddrPort{ap("[::]:5000")}, Target: n,
			Pool: &Pool{Targets: []Target{n, {Host: "Collectors.BMP.svc", Port: 5000}, {}}, ProxyProtocol: "v3",
				HealthInterval: time.Millisecond, Rebalance: true}},
		{Name: "empty", Listen: []netip.AddrPort{ap("[::]:5001")}, Pool: &Pool{}},
		{Name: "dialer", Listen: []netip.AddrPort{ap("[::]:5002")}, Target: n,
			Dial:            []netip.AddrPort{ap("198.51.100.9:5000"), ap("198.51.100.9:5000"), ap("198.51.100.9:0"), ap("[::]:5000"), {}},
			AcceptProxyFrom: Prefixes{netip.MustParsePrefix("203.0.113.0/24")}, Allow: Prefixes{netip.MustParsePrefix("198.51.100.0/24")}},
		{Name: "no dial", Dial: []netip.AddrPort{}, Target: n},
	}}
	bad.ApplyDefaults()
	wantErr := `listeners[0].pool: excludes target and targets; a pool's collectors go under pool.targets
listeners[0].pool.targets[1]: Collectors.BMP.svc:5000 is already listeners[0].pool.targets[0]; list each target once
listeners[0].pool.targets[2]: missing
listeners[0].pool.proxy_protocol: unknown proxy protocol "v3" (want v2, v1, none or transparent)
listeners[0].pool.health_interval: must be at least 100ms, got 1ms
listeners[0].pool.rebalance: refused without resync: true; a router moved without resync would be reset (set resync: true, or rebalance: false)
listeners[1].pool.targets: missing
listeners[2].dial: excludes listen; a listener either accepts routers or dials them: give each its own listener
listeners[2].dial[1]: 198.51.100.9:5000 is already listeners[2].dial[0]; list each router once
listeners[2].dial[2]: port 0 in 198.51.100.9:0: a router to dial needs a real port
listeners[2].dial[3]: unspecified address in [::]:5000: a router to dial is given by its own address
listeners[2].dial[4]: invalid address
listeners[2].accept_proxy_from: refused with dial: a dialed router speaks first-hand; accept_proxy_from is for listeners
listeners[2].allow: refused with dial: the routers dialed are the ones under dial, which allow would not filter
listeners[3].dial: at least one address is required`
	if err := bad.Validate(); err == nil || err.Error() != wantErr {
		t.Fatalf("Validate() =\n%v\nwant\n%s", err, wantErr)
	}
}
