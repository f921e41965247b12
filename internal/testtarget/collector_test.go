package testtarget

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/inspect"
	"github.com/pires/go-proxyproto"
)

// TestKindRecords: each kind records the router's address from where the
// README says it does, and refuses what it cannot read.
func TestKindRecords(t *testing.T) {
	const (
		peer   = "127.0.0.1:40000" // the proxy's own connection
		router = "198.51.100.7:51000"
		r6     = "[2001:db8::7]:51000"
	)
	none := inspect.Record{Peer: peer, Proxy: "none", SysName: "r"}
	v2 := func(family, src string) inspect.Record {
		return inspect.Record{Peer: peer, Proxy: "v2", Command: "PROXY", Family: family, Src: src, SysName: "r"}
	}
	v1 := func(family, src string) inspect.Record {
		r := v2(family, src)
		r.Proxy = "v1"
		return r
	}
	local := v2("UNSPEC", "")
	local.Command = "LOCAL"
	notBMP := none
	notBMP.BMPError = "unsupported BMP version 71"
	badHeader := inspect.Record{Peer: peer, Proxy: "v2", Error: "proxy header: invalid length"}
	mapped := none
	mapped.Peer = "[::ffff:198.51.100.7]:51000"

	for _, tt := range []struct {
		kind    Kind
		rec     inspect.Record
		want    string // the address recorded, or "" for an error
		wantErr string
	}{
		{OpenBMP, none, peer, ""},
		{OpenBMP, mapped, router, ""},
		{OpenBMP, v2("TCP4", router), "", `takes the v2 header's first byte (13) for the BMP version, logs "Unsupported BMP message version"`},
		{GoBMP, v1("TCP4", router), "", "takes the v1 header's first byte (80)"},
		{Rotonda, v2("TCP6", r6), "", "Unsupported BMP message version"},
		{OpenBMP, notBMP, "", "not a BMP session"},
		{Pmacct17, none, peer, ""},
		{Pmacct17, v2("TCP4", router), router, ""},
		{Pmacct17, v2("TCP6", r6), peer, ""},
		{Pmacct17, v1("TCP4", router), router, ""},
		{Pmacct17, v1("TCP6", r6), "127.0.0.1:51000", ""},
		{Pmacct17, local, peer, ""},
		{Pmacct, v2("TCP6", r6), r6, ""},
		{Pmacct, v1("TCP6", r6), "127.0.0.1:51000", ""},
		{Pmacct, none, peer, ""},
		{Pmacct, local, peer, ""},
		{HAProxy, local, peer, ""},
		{ProxyV2, local, peer, ""},
		{OpenBMP, local, "", "takes the v2 header's first byte (13)"},
		{HAProxy, v1("TCP6", r6), r6, ""},
		{HAProxy, none, "", "refuses a connection without a PROXY header"},
		{ProxyV2, v2("TCP6", r6), r6, ""},
		{ProxyV2, v1("TCP4", router), "", "expects a PROXY v2 header, got v1"},
		{ProxyV2, none, "", "expects a PROXY v2 header, got none"},
		{ProxyV2, badHeader, "", "drops the session: proxy header: invalid length"},
	} {
		got, err := tt.kind.Records(tt.rec)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s %+v: %v, %v; want an error with %q", tt.kind, tt.rec, got, err, tt.wantErr)
			}
		case err != nil || got.Addr.String() != tt.want:
			t.Errorf("%s %+v: %v, %v; want %s", tt.kind, tt.rec, got, err, tt.want)
		}
	}
	for _, k := range Kinds() {
		if got, err := ParseKind(string(k)); got != k || err != nil {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseKind("openbgp"); err == nil || !strings.Contains(err.Error(), `unknown collector "openbgp": want one of openbmp, `) {
		t.Errorf("ParseKind(openbgp): %v", err)
	}
}

// TestCollector: the stand-in sees the header a client sent and its BMP
// session, and what its kind makes of them.
func TestCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(t, OpenBMP, ln)
	src := netip.MustParseAddrPort("[2001:db8::7]:51000")
	for _, withHeader := range []bool{false, true} {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		name := "plain"
		if withHeader {
			name = "headed"
			h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::1]:5000")))
			if _, err := h.WriteTo(&b); err != nil {
				t.Fatal(err)
			}
		}
		b.Write(bmp.EncodeInitiation("test", name))
		conn.Write(b.Bytes())
		conn.(*net.TCPConn).CloseWrite()
		rec := c.WaitFor(t, 10*time.Second, name)
		conn.Close()
		seen, err := c.Kind.Records(rec)
		if withHeader {
			if err == nil || rec.Src != src.String() {
				t.Errorf("with a header: %+v, %v, %v; want the header seen and refused", rec, seen, err)
			}
			continue
		}
		if err != nil || seen.Addr.String() != conn.LocalAddr().String() || seen.From != "getpeername" {
			t.Errorf("without a header: %+v, %v, %v; want %s from getpeername", rec, seen, err, conn.LocalAddr())
		}
	}
	if n := len(c.Records()); n != 2 {
		t.Errorf("%d records, want 2", n)
	}
}

// TestCollectorLocalOnly: a connection with only a PROXY v2 LOCAL header
// (a pool's health check) is no router's session: WaitFor passes over it
// to the router's, WaitForLocalOnly finds it, and pmacct takes it for the
// sender's own connection.
func TestCollectorLocalOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCollector(t, Pmacct, ln)
	local, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}).Format()
	if err != nil {
		t.Fatal(err)
	}
	send := func(b []byte) net.Conn {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(b)
		conn.(*net.TCPConn).CloseWrite()
		return conn
	}
	check := send(local)
	defer check.Close()
	recs := c.WaitForLocalOnly(t, 10*time.Second, 1)
	if len(recs) != 1 {
		t.Fatalf("%d LOCAL-only records, want 1: %+v", len(recs), recs)
	}
	if seen, err := c.Kind.Records(recs[0]); err != nil || seen.Addr.String() != check.LocalAddr().String() || seen.From != "getpeername" {
		t.Errorf("LOCAL only: %+v, %v, %v; want %s from getpeername", recs[0], seen, err, check.LocalAddr())
	}

	r6 := netip.MustParseAddrPort("[2001:db8::7]:51000")
	var b bytes.Buffer
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(r6), net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::1]:5000")))
	if _, err := h.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	b.Write(bmp.EncodeInitiation("test", "router"))
	conn := send(b.Bytes())
	defer conn.Close()
	rec := c.WaitFor(t, 10*time.Second, "router")
	if seen, err := c.Kind.Records(rec); err != nil || seen.Addr != r6 {
		t.Errorf("router: %+v, %v, %v; want %s", rec, seen, err, r6)
	}
	if LocalOnly(rec) {
		t.Errorf("router's session %+v is LocalOnly", rec)
	}
	if n := len(c.WaitForLocalOnly(t, 10*time.Second, 1)); n != 1 {
		t.Errorf("%d LOCAL-only records after the router's, want 1", n)
	}
}
