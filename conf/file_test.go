package conf

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// yml strips the leading newline and turns tabs into two spaces, so that
// YAML can be written indented inside the test table.
func yml(s string) string {
	return strings.ReplaceAll(strings.TrimPrefix(s, "\n"), "\t", "  ")
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{
			name: "empty file",
			in:   "",
			want: `empty file: at least one listener is required`,
		},
		{
			name: "comments only",
			in:   "# nothing here\n",
			want: `empty file: at least one listener is required`,
		},
		{
			name: "unknown key",
			in: yml(`
listeners:
	- name: bmp
		listen: "[::]:5000"
		target: collector:5000
		proxy_protocl: v2
`),
			want: `line 5: listeners[0]: unknown field "proxy_protocl" (known: accept_proxy_from, allow, bmp, bmp_timeout, connect_timeout, dial, listen, log, max_connections, name, pool, proxy_header_timeout, proxy_protocol, resync, target, targets, tcp_keepalive, transparent_mark)`,
		},
		{
			name: "unknown top-level key",
			in: yml(`
listener:
	- name: bmp
`),
			want: `line 1: unknown field "listener" (known: admin, admin_token_file, drain_timeout, listeners, log, resync_memory, splice, transparent_setup, transparent_table)
listeners: at least one listener is required`,
		},
		{
			name: "repeated key",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: a:1
		target: b:2
`),
			want: `line 4: listeners[0]: field "target" repeats the one on line 3`,
		},
		{
			name: "bad CIDR",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: collector:5000
		allow: [198.51.100.0/33, 2001:db8::/32, 203.0.113.7/24]
`),
			want: `line 4: listeners[0].allow[0]: invalid prefix "198.51.100.0/33" (want CIDR notation such as "198.51.100.0/24")
line 4: listeners[0].allow[2]: prefix "203.0.113.7/24" has host bits set (did you mean "203.0.113.0/24"?)`,
		},
		{
			name: "bad port",
			in: yml(`
listeners:
	- listen: "[::]:70000"
		target: collector:5000
`),
			want: `line 2: listeners[0].listen: invalid port "70000" in "[::]:70000"`,
		},
		{
			name: "target without port",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: collector
`),
			want: `line 3: listeners[0].target: missing port in "collector"`,
		},
		{
			name: "duplicate listen address",
			in: yml(`
listeners:
	- name: a
		listen: "[::]:5000"
		target: collector:5000
	- name: b
		listen: ["198.51.100.1:5001", "[::]:5000"]
		target: collector:5000
`),
			want: `line 6: listeners[1].listen[1]: [::]:5000 is already used by listeners[0].listen[0]`,
		},
		{
			name: "dual-stack overlap",
			in: yml(`
listeners:
	- name: a
		listen: "[::]:5000"
		target: collector:5000
	- name: b
		listen: "0.0.0.0:5000"
		target: collector:5000
`),
			want: `line 6: listeners[1].listen[0]: 0.0.0.0:5000 overlaps listeners[0].listen[0], which is [::]:5000 and also accepts IPv4`,
		},
		{
			name: "dual-stack overlap, the IPv4 address first",
			in: yml(`
admin: "127.0.0.1:9180"
listeners:
	- name: a
		listen: "198.51.100.1:5000"
		target: collector:5000
	- name: b
		listen: ["[::]:5000", "[::]:9180"]
		target: collector:5000
`),
			want: `line 1: admin: 127.0.0.1:9180 overlaps listeners[1].listen[1], which is [::]:9180 and also accepts IPv4
line 4: listeners[0].listen[0]: 198.51.100.1:5000 overlaps listeners[1].listen[0], which is [::]:5000 and also accepts IPv4`,
		},
		{
			name: "missing target",
			in: yml(`
listeners:
	- name: bmp
		listen: "[::]:5000"
`),
			want: `line 2: listeners[0].target: missing (a listener needs target, targets or pool)`,
		},
		{
			name: "proxy_protocol v3",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: collector:5000
		proxy_protocol: v3
`),
			want: `line 4: listeners[0].proxy_protocol: unknown proxy protocol "v3" (want v2, v1, none or transparent)`,
		},
		{
			name: "unquoted IPv6 listen address",
			in: yml(`
listeners:
	- listen: [::]:5000
		target: collector:5000
`),
			want: `line 2: quote IPv6 addresses: "[::]:5000", not [::]:5000 (YAML reads [ ] as a list)`,
		},
		{
			name: "unquoted IPv6 list item",
			in: yml(`
listeners:
	- listen:
			- "127.0.0.1:5000"
			- [::]:5001
		target: collector:5000
`),
			want: `line 4: quote IPv6 addresses: "[::]:5001", not [::]:5001 (YAML reads [ ] as a list)`,
		},
		{
			name: "unquoted IPv6 addresses and other problems",
			in: yml(`
admin: [::1]:9180
listeners:
	- listen: [::]:5000
		target: collector
		proxy_protocl: v2
	- listen: [2001:db8::1]:5001 # a comment
		target: ::1:5001
		connect_timeout: 5
`),
			want: `line 1: quote IPv6 addresses: "[::1]:9180", not [::1]:9180 (YAML reads [ ] as a list)
line 3: quote IPv6 addresses: "[::]:5000", not [::]:5000 (YAML reads [ ] as a list)
line 6: quote IPv6 addresses: "[2001:db8::1]:5001", not [2001:db8::1]:5001 (YAML reads [ ] as a list)
line 4: listeners[0].target: missing port in "collector"
line 5: listeners[0]: unknown field "proxy_protocl" (known: accept_proxy_from, allow, bmp, bmp_timeout, connect_timeout, dial, listen, log, max_connections, name, pool, proxy_header_timeout, proxy_protocol, resync, target, targets, tcp_keepalive, transparent_mark)
line 7: listeners[1].target: too many colons in "::1:5001" (write an IPv6 address with a port in brackets: "[::1]:5001")
line 8: listeners[1].connect_timeout: invalid duration "5" (want a number with a unit, such as "5s" or "1m30s")`,
		},
		{
			name: "unquoted IPv6 address and another syntax error",
			in:   "listeners:\n  - listen: [::]:5000\n    name: [a\n",
			want: `line 2: quote IPv6 addresses: "[::]:5000", not [::]:5000 (YAML reads [ ] as a list)
line 2: did not find expected ',' or ']'`,
		},
		{
			name: "a tab in the indentation",
			in:   "listeners:\n\t- listen: \"[::]:5000\"\n\t  target: collector:5000\n",
			want: `line 2: indented with a tab: YAML forbids tabs for indentation; indent with spaces (line 3 too)`,
		},
		{
			name: "a tab after spaces",
			in:   "listeners:\n  - listen: \"[::]:5000\"\n  \t target: collector:5000\n  - listen: \"[::]:5001\"\n\t\ttarget: c:1\n\t\tbmp: true\n",
			want: `line 3: indented with a tab: YAML forbids tabs for indentation; indent with spaces (lines 5 and 6 too)`,
		},
		{
			name: "other syntax error",
			in:   "listeners:\n  - name: [a\n",
			want: `line 1: did not find expected ',' or ']'`, // the yaml parser's own line
		},
		{
			name: "wrong types",
			in: yml(`
drain_timeout: 5
listeners:
	- listen: "[::]:5000"
		target: collector:5000
		max_connections: lots
		tcp_keepalive: sometimes
		connect_timeout: [1s]
splice:
	disabled: "yes"
`),
			want: `line 1: drain_timeout: invalid duration "5" (want a number with a unit, such as "5s" or "1m30s")
line 5: listeners[0].max_connections: want a whole number or none, got "lots"
line 6: listeners[0].tcp_keepalive: want a mapping of keys to values, got "sometimes"
line 7: listeners[0].connect_timeout: want a duration such as "5s", got a list
line 9: splice.disabled: want true or false, got "yes"`,
		},
		{
			name: "every problem at once",
			in: yml(`
log:
	level: loud
listeners:
	- name: bmp
		listen: "[::]:5000"
		target: collector:5000
		max_connections: -1
		accept_proxy_from: 203.0.113.10
		proxy_header_timeout: 1s
		tcp_keepalive: {idle: 100ms, count: 200}
	- name: bmp
		listen: "[::]:5001"
		target: collector:5000
		log: {format: xml}
`),
			want: `line 2: log.level: unknown level "loud" (want one of trace, debug, info, warn, error, disabled)
line 9: listeners[0].proxy_header_timeout: must be at least 3s, got 1s
line 7: listeners[0].max_connections: must not be negative, got -1
line 10: listeners[0].tcp_keepalive: idle and interval must be at least 1s, got 100ms and 15s
line 10: listeners[0].tcp_keepalive.count: must be 1-127, got 200
line 11: listeners[1].name: "bmp" is already used by listeners[0]
line 14: listeners[1].log.format: unknown format "xml" (want json or console)`,
		},
		{
			name: "transparent_setup without a transparent listener",
			in: yml(`
transparent_setup: cloud
transparent_table: 300
listeners:
	- listen: "[::]:5000"
		target: collector:5000
`),
			want: `line 1: transparent_setup: unknown case "cloud" (want loopback, namespace or docker)
line 2: transparent_table: must be 1-252, got 300
line 1: transparent_setup: set, but no listener has proxy_protocol: transparent`,
		},
		{
			name: "two documents",
			in:   "listeners: []\n---\nlisteners: []\n",
			want: `line 2: more than one YAML document`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if err.Error() != tt.want {
				t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.want)
			}
		})
	}
}

// TestExample loads the shipped OpenBMP example and checks what it means.
func TestExample(t *testing.T) {
	c, err := Load("../examples/openbmp-aio.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin != netip.MustParseAddrPort("127.0.0.1:9180") || c.DrainTimeout != 5*time.Second {
		t.Errorf("top level: admin %v, drain %v", c.Admin, c.DrainTimeout)
	}
	type row struct {
		name, listen, target string
		pp                   ProxyProtocol
	}
	want := []row{
		{"bmp", "[::]:5000", "openbmp-aio:5001", ProxyV2}, // v2 to bmp-inner, the second hop
		{"rest", "[::]:8001", "openbmp-aio:8001", ProxyNone},
		{"kafka", "[::]:9092", "openbmp-aio:9092", ProxyNone},
		{"mysql", "[::]:3306", "openbmp-aio:3306", ProxyNone},
		{"zookeeper", "[::]:2181", "openbmp-aio:2181", ProxyNone},
	}
	if len(c.Listeners) != len(want) {
		t.Fatalf("%d listeners, want %d", len(c.Listeners), len(want))
	}
	for i, w := range want {
		l := c.Listeners[i]
		if l.Name != w.name || len(l.Listen) != 1 || l.Listen[0].String() != w.listen || l.Target.String() != w.target || l.ProxyProtocol != w.pp {
			t.Errorf("listeners[%d] = %s %v %s %s, want %+v", i, l.Name, l.Listen, l.Target, l.ProxyProtocol, w)
		}
		if l.KeepAlive.Disabled || l.KeepAlive.Idle != 15*time.Second || l.KeepAlive.Count != 9 {
			t.Errorf("listeners[%d] keepalive %+v", i, l.KeepAlive)
		}
	}
	bmp := c.Listeners[0]
	if len(bmp.Allow) != 3 || bmp.Allow[0] != netip.MustParsePrefix("2001:db8::/32") || bmp.MaxConnections != 1000 {
		t.Errorf("bmp policy: allow %v, max %d", bmp.Allow, bmp.MaxConnections)
	}
}

func TestParseForms(t *testing.T) {
	c, err := Parse([]byte(yml(`
listeners:
	- listen: [":5000", "198.51.100.1:5001"]
		target: "[2001:db8::2]:5000"
		allow: 198.51.100.7
		accept_proxy_from: ["::ffff:203.0.113.0/120", "2001:db8::/32"]
		tcp_keepalive: false
		log: {level: debug}
`)))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if len(l.Listen) != 2 || l.Listen[0].String() != "[::]:5000" || l.Listen[1].String() != "198.51.100.1:5001" {
		t.Errorf("listen %v", l.Listen)
	}
	if l.Target.String() != "[2001:db8::2]:5000" {
		t.Errorf("target %v", l.Target)
	}
	if len(l.Allow) != 1 || l.Allow[0].String() != "198.51.100.7/32" {
		t.Errorf("allow %v", l.Allow)
	}
	if len(l.AcceptProxyFrom) != 2 || l.AcceptProxyFrom[0].String() != "203.0.113.0/24" {
		t.Errorf("accept_proxy_from %v", l.AcceptProxyFrom)
	}
	if !l.KeepAlive.Disabled || l.Log.Level != "debug" || l.Log.Format != "json" || c.Log.Level != "info" {
		t.Errorf("keepalive %+v, log %+v, top log %+v", l.KeepAlive, l.Log, c.Log)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load("/nonexistent/bmpproxy.yaml"); err == nil || err.Error() != "config: open /nonexistent/bmpproxy.yaml: no such file or directory" {
		t.Errorf("missing file: %v", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("listeners:\n  - listen: \"[::]:5000\"\n")
	f.Close()
	want := "config " + f.Name() + ":\nline 2: listeners[0].target: missing (a listener needs target, targets or pool)"
	if _, err := Load(f.Name()); err == nil || err.Error() != want {
		t.Errorf("Load = %v, want %q", err, want)
	}
}

// FuzzParse checks that no input panics the loader, and that whatever it
// accepts is a valid configuration, which prints to a file that parses to
// the same configuration and prints the same text.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../examples/openbmp-aio.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("listeners:\n  - listen: \"[::]:5000\"\n    target: c:1\n    allow: [198.51.100.0/24]\n"))
	f.Add([]byte("listeners: [{listen: ':1', target: 'a:1', tcp_keepalive: {idle: 1s}}]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("resync_memory: 64MiB\nlisteners:\n  - listen: ':1'\n    bmp: true\n    resync: true\n    targets:\n      - target: a:1\n      - {target: 'b:2', proxy_protocol: none, buffer: 8MiB, transparent_mark: 3}\n"))
	f.Add([]byte("listeners: [{listen: ':1', target: [a:1, b:2], proxy_protocol: v1}]\n"))
	f.Add([]byte("admin: [::1]:1 x: [::]:2\nlisteners:\n  - listen: [::]:5000\n\t  target: c\n"))
	f.Add([]byte("listeners:\n  - listen: ':1'\n    bmp: true\n    resync: true\n    pool: {targets: [a:1, '[2001:db8::1]:2'], buffer: 8MiB, health_interval: 1s, rebalance: true}\n"))
	f.Add([]byte("listeners: [{dial: ['198.51.100.9:5000', '[2001:db8::1]:5000'], target: c:1}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
		checkRoundTrip(t, c)
	})
}

// TestOverrides checks what a flag given with a file does: it replaces
// the top-level setting, which a listener without its own inherits, and a
// listener's own stays; a bad value is named as the flag's, and a flag
// that does not override is refused.
func TestOverrides(t *testing.T) {
	byName := map[string]Flag{}
	for _, f := range Flags() {
		byName[f.Name] = f
	}
	file := []byte(yml(`
admin_token_file: /etc/token
log:
	level: warn
	format: json
listeners:
	- name: inherits
		listen: "[::]:5000"
		target: collector:5000
	- name: own
		listen: "[::]:5001"
		target: collector:5001
		log: {level: error, format: json}
`))
	c, err := Parse(file,
		Override{Flag: byName["log-level"], Values: []string{"debug"}},
		Override{Flag: byName["log-format"], Values: []string{"console"}},
		Override{Flag: byName["admin-token-file"], Values: []string{"/run/token"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Log != (Log{Level: "debug", Format: "console"}) || c.AdminTokenFile != "/run/token" {
		t.Errorf("top level: log %+v, token file %q", c.Log, c.AdminTokenFile)
	}
	if l := c.Listeners[0].Log; l != (Log{Level: "debug", Format: "console"}) {
		t.Errorf("inheriting listener: log %+v", l)
	}
	if l := c.Listeners[1].Log; l != (Log{Level: "error", Format: "json"}) {
		t.Errorf("listener with its own log: %+v", l)
	}

	for _, tt := range []struct {
		flag   string
		values []string
		want   string
	}{
		{"log-level", []string{"loud"}, `--log-level: unknown level "loud" (want one of trace, debug, info, warn, error, disabled)`},
		{"log-format", []string{"xml"}, `--log-format: unknown format "xml" (want json or console)`},
		{"target", []string{"c:1"}, `--target cannot override a file's setting`},
	} {
		_, err := Parse(file, Override{Flag: byName[tt.flag], Values: tt.values})
		if err == nil || err.Error() != tt.want {
			t.Errorf("--%s %q: %v, want %q", tt.flag, tt.values, err, tt.want)
		}
	}
	var overriding []string
	for _, f := range Flags() {
		if f.Overrides {
			overriding = append(overriding, f.Name)
		}
	}
	if got := strings.Join(overriding, " "); got != "admin-token-file log-level log-format" {
		t.Errorf("flags that override a file: %s", got)
	}
}

// TestTargets covers target and targets: the forms, what a leg inherits
// from its listener, and every error, in its exact words.
func TestTargets(t *testing.T) {
	a := Target{Host: "pmacct", Port: 5000}
	b := Target{Host: "2001:db8::20", Port: 5000}
	tests := []struct {
		name, in string
		want     []Leg // the first listener's targets
		wantErr  string
	}{
		{
			name: "target",
			in:   "listeners: [{listen: ':5000', target: 'pmacct:5000'}]\n",
			want: []Leg{{Target: a, ProxyProtocol: ProxyV2, Buffer: 4 * MiB, TransparentMark: 1}},
		},
		{
			name: "a list under target, the listener's settings for each",
			in:   "listeners: [{listen: ':5000', target: ['pmacct:5000', '[2001:db8::20]:5000'], proxy_protocol: none, transparent_mark: 7}]\n",
			want: []Leg{
				{Target: a, ProxyProtocol: ProxyNone, Buffer: 4 * MiB, TransparentMark: 7},
				{Target: b, ProxyProtocol: ProxyNone, Buffer: 4 * MiB, TransparentMark: 7},
			},
		},
		{
			name: "targets, each its own or the listener's, whatever the order of the keys",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		targets:
			- target: pmacct:5000
			- target: "[2001:db8::20]:5000"
				proxy_protocol: transparent
				buffer: 8MiB
				transparent_mark: 9
			- target: c:1
				buffer: 65536
		proxy_protocol: v1
		transparent_mark: 3
`),
			want: []Leg{
				{Target: a, ProxyProtocol: ProxyV1, Buffer: 4 * MiB, TransparentMark: 3},
				{Target: b, ProxyProtocol: ProxyTransparent, Buffer: 8 * MiB, TransparentMark: 9},
				{Target: Target{Host: "c", Port: 1}, ProxyProtocol: ProxyV1, Buffer: 64 * KiB, TransparentMark: 3},
			},
		},
		{
			name: "the bounds of buffer",
			in:   "listeners: [{listen: ':5000', targets: [{target: 'pmacct:5000', buffer: 64KiB}, {target: 'c:1', buffer: 1GiB}]}]\n",
			want: []Leg{
				{Target: a, ProxyProtocol: ProxyV2, Buffer: 64 * KiB, TransparentMark: 1},
				{Target: Target{Host: "c", Port: 1}, ProxyProtocol: ProxyV2, Buffer: GiB, TransparentMark: 1},
			},
		},
		{
			name: "target and targets",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: pmacct:5000
		targets:
			- target: c:1
`),
			wantErr: `line 4: listeners[0]: target (line 3) and targets (line 4) exclude each other; list every target under targets`,
		},
		{
			name:    "targets and then target",
			in:      "listeners:\n  - targets: [{target: 'c:1'}]\n    listen: ':5000'\n    target: c:2\n",
			wantErr: `line 4: listeners[0]: target (line 4) and targets (line 2) exclude each other; list every target under targets`,
		},
		{
			name: "a target twice in targets",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		targets:
			- target: collector:5000
			- target: Collector:5000
				proxy_protocol: none
`),
			wantErr: `line 5: listeners[0].targets[1]: Collector:5000 is already listeners[0].targets[0]; list each target once`,
		},
		{
			name: "a target twice under target",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target:
			- c:1
			- "[2001:db8::20]:5000"
			- "[2001:db8:0::20]:5000"
`),
			wantErr: `line 6: listeners[0].target[2]: [2001:db8::20]:5000 is given twice; give each target once`,
		},
		{
			name:    "no targets",
			in:      "listeners: [{listen: ':5000', targets: []}]\n",
			wantErr: `line 1: listeners[0].targets: at least one target is required`,
		},
		{
			name:    "no target in the list under target",
			in:      "listeners: [{listen: ':5000', target: []}]\n",
			wantErr: `line 1: listeners[0].target: missing (a listener needs target, targets or pool)`,
		},
		{
			name:    "a target without its address",
			in:      "listeners:\n  - listen: ':5000'\n    targets:\n      - buffer: 8MiB\n",
			wantErr: `line 4: listeners[0].targets[0].target: missing`,
		},
		{
			name:    "an address for a target",
			in:      "listeners:\n  - listen: ':5000'\n    targets:\n      - c:1\n",
			wantErr: `line 4: listeners[0].targets[0]: want a mapping such as {target: "c:1"}, got "c:1"`,
		},
		{
			name:    "an address for targets",
			in:      "listeners:\n  - listen: ':5000'\n    targets: c:1\n",
			wantErr: `line 3: listeners[0].targets: want a list of targets, got "c:1"`,
		},
		{
			name: "the problems of targets",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		targets:
			- target: collector
				bufer: 8MiB
			- target: c:1
				proxy_protocol: v3
				transparent_mark: 0
			- target: c:2
				buffer: 32KiB
			- target: c:3
				buffer: 2GiB
			- target: c:4
				buffer: 4MB
			- target: c:5
				buffer: [1]
`),
			wantErr: `line 4: listeners[0].targets[0].target: missing port in "collector"
line 5: listeners[0].targets[0]: unknown field "bufer" (known: buffer, proxy_protocol, target, transparent_mark)
line 7: listeners[0].targets[1].proxy_protocol: unknown proxy protocol "v3" (want v2, v1, none or transparent)
line 8: listeners[0].targets[1].transparent_mark: must be 1-4294967295, got 0
line 14: listeners[0].targets[4].buffer: invalid size "4MB" (write 4MiB: sizes count in powers of 1024)
line 16: listeners[0].targets[5].buffer: want a size such as 4MiB, got a list
line 10: listeners[0].targets[2].buffer: must be at least 64KiB and at most 1GiB, got 32KiB
line 12: listeners[0].targets[3].buffer: must be at least 64KiB and at most 1GiB, got 2GiB`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := c.Listeners[0]
			if !reflect.DeepEqual(l.Targets, tt.want) || l.Target != tt.want[0].Target {
				t.Fatalf("target %v, targets %+v\nwant %+v", l.Target, l.Targets, tt.want)
			}
			checkRoundTrip(t, c)
		})
	}

	// target and a list of one under targets with the listener's settings
	// are the same, and both print as target, as a file from before
	// targets existed does.
	one, err := Parse([]byte("listeners: [{listen: ':5000', target: 'pmacct:5000', proxy_protocol: none}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	list, err := Parse([]byte("listeners: [{listen: ':5000', targets: [{target: 'pmacct:5000'}], proxy_protocol: none}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(one, list) {
		t.Fatalf("target gave %+v\ntargets gave %+v", one, list)
	}
	text, err := list.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "\n    target: pmacct:5000\n") || strings.Contains(string(text), "targets") {
		t.Fatalf("a list of one with the listener's settings printed as\n%s", text)
	}
	// A leg with a setting of its own prints as targets, every key spelled out.
	own, err := Parse([]byte("listeners: [{listen: ':5000', targets: [{target: 'pmacct:5000', buffer: 8MiB}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	text, err = own.YAML()
	if err != nil {
		t.Fatal(err)
	}
	const printed = `    targets:
      - target: pmacct:5000
        proxy_protocol: v2
        buffer: 8MiB
        transparent_mark: 1
    proxy_protocol: v2
`
	if !strings.Contains(string(text), printed) || strings.Contains(string(text), "    target: ") {
		t.Fatalf("a leg of its own printed as\n%s\nwant\n%s", text, printed)
	}
}

// TestResync covers resync and resync_memory.
func TestResync(t *testing.T) {
	tests := []struct {
		name, in string
		check    func(*Config) bool
		wantErr  string
	}{
		{name: "off by default", in: "listeners: [{listen: ':5000', target: 'c:1', bmp: true}]\n",
			check: func(c *Config) bool { return !c.Listeners[0].Resync && c.ResyncMemory == GiB }},
		{name: "on, with bmp", in: "listeners: [{listen: ':5000', target: 'c:1', bmp: true, resync: true}]\n",
			check: func(c *Config) bool { return c.Listeners[0].Resync }},
		{name: "without bmp", in: yml(`
listeners:
	- listen: "[::]:5000"
		target: c:1
		resync: true
`), wantErr: `line 4: listeners[0].resync: refused without bmp: true; add bmp: true (resync keeps each router's BMP state, which only a BMP listener reads)`},
		{name: "with bmp: false", in: "listeners: [{listen: ':5000', target: 'c:1', bmp: false, resync: true}]\n",
			wantErr: `line 1: listeners[0].resync: refused without bmp: true; add bmp: true (resync keeps each router's BMP state, which only a BMP listener reads)`},
		{name: "resync not a boolean", in: "listeners: [{listen: ':5000', target: 'c:1', bmp: true, resync: yes}]\n",
			wantErr: `line 1: listeners[0].resync: want true or false, got "yes"`},
		{name: "resync_memory", in: "resync_memory: 16GiB\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			check: func(c *Config) bool { return c.ResyncMemory == 16*GiB }},
		{name: "resync_memory in bytes", in: "resync_memory: 16777216\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			check: func(c *Config) bool { return c.ResyncMemory == MinResyncMemory }},
		{name: "resync_memory too small", in: "resync_memory: 8MiB\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			wantErr: `line 1: resync_memory: must be at least 16MiB, got 8MiB (the resync state is always bounded)`},
		{name: "resync_memory 0", in: "resync_memory: 0\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			wantErr: `line 1: resync_memory: must be at least 16MiB, got 0 (the resync state is always bounded)`},
		{name: "resync_memory none", in: "resync_memory: none\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			wantErr: `line 1: resync_memory: invalid size "none" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
		{name: "resync_memory 1.5GiB", in: "resync_memory: 1.5GiB\nlisteners: [{listen: ':5000', target: 'c:1'}]\n",
			wantErr: `line 1: resync_memory: invalid size "1.5GiB" (want a size such as 4MiB: a whole number of bytes, KiB, MiB, GiB or TiB)`},
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
			checkRoundTrip(t, c)
		})
	}
}

// TestTransparentTargets: a leg dialed transparently needs the return
// routing as a transparent listener does, and shares its mark.
func TestTransparentTargets(t *testing.T) {
	c, err := Parse([]byte(yml(`
transparent_setup: loopback
listeners:
	- listen: "[::]:5000"
		targets:
			- target: pmacct:5000
			- target: c:1
				proxy_protocol: transparent
				transparent_mark: 5
`)))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.TransparentMark(); m != 5 {
		t.Fatalf("TransparentMark() = %d, want 5", m)
	}
	_, err = Parse([]byte(yml(`
transparent_setup: loopback
listeners:
	- listen: "[::]:5000"
		proxy_protocol: transparent
		targets:
			- target: pmacct:5000
			- target: c:1
				transparent_mark: 5
`)))
	if want := `line 1: transparent_setup: the transparent listeners must share one transparent_mark`; err == nil || err.Error() != want {
		t.Fatalf("Parse error %v, want %q", err, want)
	}
}

// TestPool covers pool: its forms, what it inherits from its listener and
// gets by default, that it prints as it was read, and every error, in its
// exact words.
func TestPool(t *testing.T) {
	a := Target{Host: "2001:db8::11", Port: 5000}
	b := Target{Host: "198.51.100.12", Port: 5000}
	n := Target{Host: "collectors.bmp.svc", Port: 5000}
	tests := []struct {
		name, in string
		want     *Pool // the first listener's
		wantErr  string
	}{
		{
			name: "every key",
			in: yml(`
listeners:
	- name: routers
		listen: "[::]:5000"
		bmp: true
		resync: true
		pool:
			targets: ["[2001:db8::11]:5000", "198.51.100.12:5000", "collectors.bmp.svc:5000"]
			proxy_protocol: none
			buffer: 8MiB
			transparent_mark: 7
			health_interval: 1s
			resolve_interval: 100ms
			rebalance: true
`),
			want: &Pool{Targets: []Target{a, b, n}, ProxyProtocol: ProxyNone, Buffer: 8 * MiB, TransparentMark: 7,
				HealthInterval: time.Second, ResolveInterval: MinPoolInterval, HoldDown: DefaultHoldDown, Rebalance: true},
		},
		{
			name: "the defaults, and the listener's settings",
			in:   "listeners: [{listen: ':5000', proxy_protocol: v1, transparent_mark: 3, pool: {targets: ['collectors.bmp.svc:5000']}}]\n",
			want: &Pool{Targets: []Target{n}, ProxyProtocol: ProxyV1, Buffer: DefaultBuffer, TransparentMark: 3,
				HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown},
		},
		{
			name: "one address for targets",
			in:   "listeners: [{listen: ':5000', pool: {targets: 'collectors.bmp.svc:5000'}}]\n",
			want: &Pool{Targets: []Target{n}, ProxyProtocol: ProxyV2, Buffer: DefaultBuffer, TransparentMark: 1,
				HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown},
		},
		{
			name: "a pool without resync",
			in:   "listeners: [{listen: ':5000', bmp: true, pool: {targets: ['[2001:db8::11]:5000'], rebalance: false}}]\n",
			want: &Pool{Targets: []Target{a}, ProxyProtocol: ProxyV2, Buffer: DefaultBuffer, TransparentMark: 1,
				HealthInterval: DefaultHealthInterval, ResolveInterval: DefaultResolveInterval, HoldDown: DefaultHoldDown},
		},
		{
			name: "pool and target",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		target: c:1
		pool:
			targets: c:2
`),
			wantErr: `line 4: listeners[0]: target (line 3) and pool (line 4) exclude each other; a pool's collectors go under pool.targets`,
		},
		{
			name: "targets and pool",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		pool: {targets: c:2}
		targets:
			- target: c:1
`),
			wantErr: `line 4: listeners[0]: targets (line 4) and pool (line 3) exclude each other; a pool's collectors go under pool.targets`,
		},
		{
			name:    "no targets",
			in:      "listeners:\n  - listen: ':5000'\n    pool: {health_interval: 1s}\n",
			wantErr: `line 3: listeners[0].pool.targets: missing`,
		},
		{
			name:    "an empty list of targets",
			in:      "listeners:\n  - listen: ':5000'\n    pool: {targets: []}\n",
			wantErr: `line 3: listeners[0].pool.targets: at least one target is required`,
		},
		{
			name:    "a list for pool",
			in:      "listeners:\n  - listen: ':5000'\n    pool: [c:1, c:2]\n",
			wantErr: `line 3: listeners[0].pool: want a mapping such as {targets: ["collector:5000"]}, got a list`,
		},
		{
			name:    "nothing for pool",
			in:      "listeners:\n  - listen: ':5000'\n    pool:\n",
			wantErr: `line 3: listeners[0].pool: want a mapping such as {targets: ["collector:5000"]}, got nothing`,
		},
		{
			name: "the problems of a pool",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		bmp: true
		pool:
			targets:
				- collector
				- c:1
				- C:1
				- "[2001:db8::11]:0"
			proxy_protocol: v3
			buffer: 32KiB
			transparent_mark: 0
			health_interval: 10ms
			resolve_interval: 5
			rebalance: true
			drain: true
`),
			wantErr: `line 6: listeners[0].pool.targets[0]: missing port in "collector"
line 8: listeners[0].pool.targets[2]: C:1 is given twice; give each target once
line 9: listeners[0].pool.targets[3]: port 0 in "[2001:db8::11]:0": a target needs a real port
line 10: listeners[0].pool.proxy_protocol: unknown proxy protocol "v3" (want v2, v1, none or transparent)
line 12: listeners[0].pool.transparent_mark: must be 1-4294967295, got 0
line 14: listeners[0].pool.resolve_interval: invalid duration "5" (want a number with a unit, such as "5s" or "1m30s")
line 16: listeners[0].pool: unknown field "drain" (known: buffer, health_interval, hold_down, proxy_protocol, rebalance, resolve_interval, targets, transparent_mark)
line 11: listeners[0].pool.buffer: must be at least 64KiB and at most 1GiB, got 32KiB
line 13: listeners[0].pool.health_interval: must be at least 100ms, got 10ms
line 15: listeners[0].pool.rebalance: refused without resync: true; a router moved without resync would be reset (set resync: true, or rebalance: false)`,
		},
		{
			name:    "buffer too large, resolve_interval too short",
			in:      "listeners:\n  - listen: ':5000'\n    pool: {targets: c:1, buffer: 2GiB, resolve_interval: 99ms}\n",
			wantErr: "line 3: listeners[0].pool.buffer: must be at least 64KiB and at most 1GiB, got 2GiB\nline 3: listeners[0].pool.resolve_interval: must be at least 100ms, got 99ms",
		},
		{
			name:    "rebalance with resync: false",
			in:      "listeners: [{listen: ':5000', bmp: true, resync: false, pool: {targets: c:1, rebalance: true}}]\n",
			wantErr: `line 1: listeners[0].pool.rebalance: refused without resync: true; a router moved without resync would be reset (set resync: true, or rebalance: false)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := c.Listeners[0]
			if !reflect.DeepEqual(l.Pool, tt.want) {
				t.Fatalf("pool %+v\nwant %+v", l.Pool, tt.want)
			}
			if l.Targets != nil || !l.Target.IsZero() {
				t.Fatalf("a pooled listener has target %v, targets %+v", l.Target, l.Targets)
			}
			checkRoundTrip(t, c)
		})
	}
}

// TestDial covers dial: the forms, and every error, in its exact words.
func TestDial(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name, in string
		want     []netip.AddrPort // the first listener's
		wantErr  string
	}{
		{
			name: "a list",
			in:   "listeners: [{dial: ['[2001:db8::1]:5000', '198.51.100.9:5000', '[::ffff:198.51.100.10]:5000', '[fe80::1%eth0]:5000'], target: c:1}]\n",
			want: []netip.AddrPort{ap("[2001:db8::1]:5000"), ap("198.51.100.9:5000"), ap("198.51.100.10:5000"), ap("[fe80::1%eth0]:5000")},
		},
		{
			name: "one address",
			in:   "listeners: [{dial: '198.51.100.9:5000', target: c:1}]\n",
			want: []netip.AddrPort{ap("198.51.100.9:5000")},
		},
		{
			name: "two listeners dial one router, and another listens on its port",
			in: yml(`
listeners:
	- name: a
		dial: "198.51.100.9:5000"
		target: c:1
	- name: b
		dial: "198.51.100.9:5000"
		target: c:2
	- name: c
		listen: "[::]:5000"
		target: c:3
`),
			want: []netip.AddrPort{ap("198.51.100.9:5000")},
		},
		{
			name: "listen and dial",
			in: yml(`
listeners:
	- listen: "[::]:5000"
		dial: "198.51.100.9:5000"
		target: c:1
`),
			wantErr: `line 3: listeners[0]: listen (line 2) and dial (line 3) exclude each other; a listener either accepts routers or dials them: give each its own listener`,
		},
		{
			name:    "an empty list",
			in:      "listeners:\n  - dial: []\n    target: c:1\n",
			wantErr: `line 2: listeners[0].dial: at least one address is required`,
		},
		{
			name: "the problems of dial",
			in: yml(`
listeners:
	- dial:
			- router1.example:5000
			- "198.51.100.9:0"
			- "[::]:5000"
			- ":5000"
			- "198.51.100.9"
			- "2001:db8::1:5000"
			- "198.51.100.9:5000"
			- "[::ffff:198.51.100.9]:5000"
			- [1]
		target: c:1
		accept_proxy_from: 203.0.113.10
		allow: 198.51.100.0/24
`),
			wantErr: `line 3: listeners[0].dial[0]: "router1.example" is not an IP address in "router1.example:5000" (a router to dial is given by its address, not a name)
line 4: listeners[0].dial[1]: port 0 in "198.51.100.9:0": a router to dial needs a real port
line 5: listeners[0].dial[2]: unspecified address in "[::]:5000": a router to dial is given by its own address
line 6: listeners[0].dial[3]: missing address in ":5000" (a router to dial is given by its address)
line 7: listeners[0].dial[4]: missing port in "198.51.100.9"
line 8: listeners[0].dial[5]: too many colons in "2001:db8::1:5000" (write an IPv6 address with a port in brackets: "[2001:db8::1]:5000")
line 10: listeners[0].dial[7]: 198.51.100.9:5000 is given twice; give each router once
line 11: listeners[0].dial[8]: want a router's address such as "[2001:db8::1]:5000", got a list (quote IPv6 addresses: "[::]:5000")
line 13: listeners[0].accept_proxy_from: refused with dial: a dialed router speaks first-hand; accept_proxy_from is for listeners
line 14: listeners[0].allow: refused with dial: the routers dialed are the ones under dial, which allow would not filter`,
		},
		{
			name:    "neither listen nor dial",
			in:      "listeners: [{target: c:1}]\n",
			wantErr: `line 1: listeners[0].listen: at least one address is required`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := c.Listeners[0]
			if !reflect.DeepEqual(l.Dial, tt.want) || l.Listen != nil {
				t.Fatalf("dial %v, listen %v; want dial %v", l.Dial, l.Listen, tt.want)
			}
			checkRoundTrip(t, c)
		})
	}
}

// TestPoolAndDialPrint: the listeners of the file syntax's example print
// a pool as a mapping with every key and no target, and dial with no
// listen, and the printout parses back to them.
func TestPoolAndDialPrint(t *testing.T) {
	c, err := Parse([]byte(yml(`
listeners:
	- name: routers
		listen: "[::]:5000"
		bmp: true
		resync: true
		pool:
			targets: ["[2001:db8::11]:5000", "198.51.100.12:5000", "collectors.bmp.svc:5000"]
			buffer: 8MiB
	- name: passive
		dial: ["[2001:db8::1]:5000", "198.51.100.9:5000"]
		bmp: true
		target: collector:5000
`)))
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, c)
	text, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	const pool = `  - name: routers
    listen:
      - '[::]:5000'
    pool:
      targets:
        - '[2001:db8::11]:5000'
        - 198.51.100.12:5000
        - collectors.bmp.svc:5000
      proxy_protocol: v2
      buffer: 8MiB
      transparent_mark: 1
      health_interval: 5s
      resolve_interval: 30s
      hold_down: 30s
      rebalance: false
    proxy_protocol: v2
`
	const dial = `  - name: passive
    dial:
      - '[2001:db8::1]:5000'
      - 198.51.100.9:5000
    target: collector:5000
    proxy_protocol: v2
`
	if !strings.Contains(string(text), pool) || !strings.Contains(string(text), dial) {
		t.Fatalf("printed\n%s\nwant in it\n%s\nand\n%s", text, pool, dial)
	}
	routers, passive, _ := strings.Cut(string(text), "  - name: passive\n")
	if strings.Contains(routers, "\n    target") || strings.Contains(passive, "listen") {
		t.Fatalf("a pool printed target or targets, or dial printed listen:\n%s", text)
	}
}

// TestTransparentPool: a pool dialed transparently needs the return
// routing as a transparent leg does, and shares its mark.
func TestTransparentPool(t *testing.T) {
	c, err := Parse([]byte(yml(`
transparent_setup: loopback
listeners:
	- listen: "[::]:5000"
		pool:
			targets: c:1
			proxy_protocol: transparent
			transparent_mark: 5
`)))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.TransparentMark(); m != 5 {
		t.Fatalf("TransparentMark() = %d, want 5", m)
	}
	_, err = Parse([]byte(yml(`
transparent_setup: loopback
listeners:
	- listen: "[::]:5000"
		proxy_protocol: transparent
		target: c:1
	- listen: "[::]:5001"
		proxy_protocol: transparent
		pool: {targets: c:2, transparent_mark: 5}
`)))
	if want := `line 1: transparent_setup: the transparent listeners must share one transparent_mark`; err == nil || err.Error() != want {
		t.Fatalf("Parse error %v, want %q", err, want)
	}
	_, err = Parse([]byte("transparent_setup: loopback\nlisteners: [{listen: ':5000', proxy_protocol: transparent, pool: {targets: c:1, proxy_protocol: v2}}]\n"))
	if want := `line 1: transparent_setup: set, but no listener has proxy_protocol: transparent`; err == nil || err.Error() != want {
		t.Fatalf("Parse error %v, want %q", err, want)
	}
}
