package proxy

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/bmpproxy/bmpproxy/conf"
)

// sigV2 is the PROXY v2 signature from the HAProxy spec, section 2.2.
const sigV2 = "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"

// cat joins the signature and the given parts.
func cat(parts ...[]byte) []byte { return append([]byte(sigV2), bytes.Join(parts, nil)...) }

func TestProxyHeader(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name          string
		mode          conf.ProxyProtocol
		client, local netip.AddrPort
		want          []byte
		wantErr       error
	}{
		{
			name:   "v2 IPv4",
			mode:   conf.ProxyV2,
			client: ap("198.51.100.7:40000"), local: ap("203.0.113.1:5000"),
			// ver/cmd 0x21 (v2, PROXY), fam 0x11 (TCP over IPv4), len 12,
			// src addr, dst addr, src port, dst port.
			want: cat([]byte{0x21, 0x11, 0x00, 0x0C,
				198, 51, 100, 7, 203, 0, 113, 1, 0x9C, 0x40, 0x13, 0x88}),
		},
		{
			name:   "v2 IPv4 arriving as IPv4-mapped IPv6 on a dual-stack socket",
			mode:   conf.ProxyV2,
			client: ap("[::ffff:198.51.100.7]:40000"), local: ap("[::ffff:203.0.113.1]:5000"),
			want: cat([]byte{0x21, 0x11, 0x00, 0x0C,
				198, 51, 100, 7, 203, 0, 113, 1, 0x9C, 0x40, 0x13, 0x88}),
		},
		{
			name:   "v2 IPv6",
			mode:   conf.ProxyV2,
			client: ap("[2001:db8::1]:179"), local: ap("[2001:db8::2]:5000"),
			// fam 0x21 (TCP over IPv6), len 36.
			want: cat([]byte{0x21, 0x21, 0x00, 0x24},
				[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
				[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
				[]byte{0x00, 0xB3, 0x13, 0x88}),
		},
		{
			name:   "v2 IPv6 link-local zone is dropped",
			mode:   conf.ProxyV2,
			client: ap("[fe80::1%eth0]:1"), local: ap("[fe80::2%eth0]:2"),
			want: cat([]byte{0x21, 0x21, 0x00, 0x24},
				[]byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
				[]byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
				[]byte{0x00, 0x01, 0x00, 0x02}),
		},
		{
			name:   "v1 IPv4",
			mode:   conf.ProxyV1,
			client: ap("[::ffff:198.51.100.7]:40000"), local: ap("[::ffff:203.0.113.1]:5000"),
			want: []byte("PROXY TCP4 198.51.100.7 203.0.113.1 40000 5000\r\n"),
		},
		{
			name:   "v1 IPv6",
			mode:   conf.ProxyV1,
			client: ap("[2001:db8::1]:179"), local: ap("[2001:db8::2]:5000"),
			want: []byte("PROXY TCP6 2001:db8::1 2001:db8::2 179 5000\r\n"),
		},
		{
			name:   "none",
			mode:   conf.ProxyNone,
			client: ap("198.51.100.7:1"), local: ap("203.0.113.1:2"),
			want: nil,
		},
		{
			name:   "mixed families are refused, not sent as LOCAL",
			mode:   conf.ProxyV2,
			client: ap("198.51.100.7:1"), local: ap("[2001:db8::2]:2"),
			wantErr: ErrHeader,
		},
		{
			name:   "invalid address is refused",
			mode:   conf.ProxyV2,
			client: netip.AddrPort{}, local: ap("203.0.113.1:2"),
			wantErr: ErrHeader,
		},
		{
			name:   "unknown mode",
			mode:   "v3",
			client: ap("198.51.100.7:1"), local: ap("203.0.113.1:2"),
			wantErr: ErrHeader,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proxyHeader(tt.mode, tt.client, tt.local)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("header\n got % x\nwant % x", got, tt.want)
			}
		})
	}
}

func BenchmarkProxyHeader(b *testing.B) {
	client := netip.MustParseAddrPort("[::ffff:198.51.100.7]:40000")
	local := netip.MustParseAddrPort("[::ffff:203.0.113.1]:5000")
	for b.Loop() {
		if _, err := proxyHeader(conf.ProxyV2, client, local); err != nil {
			b.Fatal(err)
		}
	}
}
