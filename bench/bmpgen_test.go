package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
)

var testSpec = tableSpec{peers: 3, v4: 3000, v6: 700, attrSets: 60}

// TestTableStream checks the workload with an independent parser
// (internal/bmpcheck), with the resync cache, and with the collector's
// own count.
func TestTableStream(t *testing.T) {
	s := testSpec.stream()
	st, err := bmpcheck.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != testSpec.peers {
		t.Fatalf("%d peers up, want %d", len(st.Peers), testSpec.peers)
	}
	for k, p := range st.Peers {
		v4, v6 := p.Tables[bmpcheck.IPv4Unicast], p.Tables[bmpcheck.IPv6Unicast]
		if v4 == nil || v6 == nil || len(v4.Routes) != testSpec.v4 || len(v6.Routes) != testSpec.v6 {
			t.Fatalf("peer %v: tables %v", k, p.Tables)
		}
		if !v4.EndOfRIB || !v6.EndOfRIB {
			t.Errorf("peer %v: End-of-RIB missing", k)
		}
		attrs := map[bmpcheck.Attrs]bool{}
		for _, r := range v4.Routes {
			attrs[r.Attrs] = true
		}
		if want := testSpec.attrSets / testSpec.peers; len(attrs) != want {
			t.Errorf("peer %v: %d IPv4 attribute sets, want %d", k, len(attrs), want)
		}
	}

	r := rib.NewRouter(nil, "test")
	r.Feed(s)
	if st := r.Status(); st.State != rib.Keeping {
		t.Fatal(st.Err)
	}
	if got := r.Stats().Routes; got != testSpec.routes() {
		t.Fatalf("the cache holds %d routes, want %d", got, testSpec.routes())
	}
}

// TestCollect checks the collector's count on the workload and on its
// replay by the resync cache, through a loopback connection.
func TestCollect(t *testing.T) {
	s := testSpec.stream()
	r := rib.NewRouter(nil, "test")
	r.Feed(s)
	snap, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	replay, err := io.ReadAll(snap)
	snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := tallyWant{routes: testSpec.routes(), eors: 2 * testSpec.peers, peerUps: testSpec.peers}
	for name, b := range map[string][]byte{"stream": s, "replay": replay} {
		t.Run(name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() { c.Write(b) }() // ends when c closes
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			got, err := collect(sc.(*net.TCPConn), bufio.NewReader(sc), want)
			if err != nil {
				t.Fatal(err)
			}
			if got.bytes != int64(len(b)) || got.initiations != 1 {
				t.Errorf("%d bytes of %d, %d Initiations", got.bytes, len(b), got.initiations)
			}
		})
	}
	// A truncated table is not taken for a whole one.
	short := bytes.Clone(s[:len(s)-30])
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	go func() { c.Write(short); c.Close() }()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := collect(sc.(*net.TCPConn), bufio.NewReader(sc), want); err == nil {
		t.Error("a truncated table was counted whole")
	}
}
