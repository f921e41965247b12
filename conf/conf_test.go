package conf

import (
	"net/netip"
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
listeners[0].target: missing
listeners[0].proxy_protocol: unknown proxy protocol "v9" (want v2, v1, none or transparent)
listeners[0].connect_timeout: must be positive, got -1s
listeners[1].name: "bmp" is already used by listeners[0]
listeners[1].listen: at least one address is required
listeners[1].target: missing`
	if err := bad.Validate(); err == nil || err.Error() != want {
		t.Fatalf("Validate() =\n%v\nwant\n%s", err, want)
	}
	if err := Default().Validate(); err == nil || err.Error() != "listeners: at least one listener is required" {
		t.Fatalf("empty config: %v", err)
	}
}
