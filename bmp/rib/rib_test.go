package rib

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
)

var (
	allMP  = [][]byte{capMP(1, 1), capMP(2, 1), capMP(1, 2), capMP(2, 2), capMP(1, 4), capMP(2, 4), capMP(1, 128), capMP(2, 128)}
	attrsA = cat(origin(), asPath(65001, 64500), med(1))
	attrsB = cat(origin(), asPath(65001, 64501), med(2))
	nhA    = nextHop("198.51.100.254")
)

// withdrawLabel is the RFC 8277 Compatibility field of a withdrawal.
var withdrawLabel = []byte{0x80, 0, 0}

func TestMessages(t *testing.T) {
	up := peerUp(hdrV4, allMP, allMP)
	post := hdrV4.with(flagL)
	tests := []struct {
		name string
		msgs [][]byte
		want []string
	}{{
		name: "ipv4 nlri",
		msgs: [][]byte{up, rm(hdrV4, update(nil, cat(attrsA, nhA), cat(pfx("203.0.113.0/24"), pfx("10.0.0.0/8"))))},
		want: []string{
			"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1",
			"198.51.100.1 ipv4-unicast 203.0.113.0/24 nh=198.51.100.254 med=1",
		},
	}, {
		name: "ipv4 withdrawn routes",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), cat(pfx("203.0.113.0/24"), pfx("10.0.0.0/8")))),
			rm(hdrV4, update(pfx("10.0.0.0/8"), nil, nil)),
		},
		want: []string{"198.51.100.1 ipv4-unicast 203.0.113.0/24 nh=198.51.100.254 med=1"},
	}, {
		name: "withdrawn and announced in one update: announced",
		msgs: [][]byte{up, rm(hdrV4, update(pfx("10.0.0.0/8"), cat(attrsA, nhA), pfx("10.0.0.0/8")))},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}, {
		name: "re-announcement replaces the attributes",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			rm(hdrV4, update(nil, cat(attrsB, nhA), pfx("10.0.0.0/8"))),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=2"},
	}, {
		name: "zero-length prefix and host route",
		msgs: [][]byte{up, rm(hdrV4, update(nil, cat(attrsA, nhA), cat(pfx("0.0.0.0/0"), pfx("198.51.100.7/32"))))},
		want: []string{
			"198.51.100.1 ipv4-unicast 0.0.0.0/0 nh=198.51.100.254 med=1",
			"198.51.100.1 ipv4-unicast 198.51.100.7/32 nh=198.51.100.254 med=1",
		},
	}, {
		name: "bits past the prefix length are not part of the key",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), cat([]byte{12, 10, 0x1f}, []byte{16, 10, 2}))),
			rm(hdrV4, update([]byte{12, 10, 0x10}, nil, nil)),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.2.0.0/16 nh=198.51.100.254 med=1"},
	}, {
		name: "ipv6 mp_reach and mp_unreach",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(2, 1, "2001:db8::1,fe80::1", pfx("2001:db8:1::/48"), pfx("2001:db8:2::/48")), attrsA), nil)),
			rm(hdrV4, update(nil, mpUnreach(2, 1, pfx("2001:db8:1::/48")), nil)),
		},
		want: []string{"198.51.100.1 ipv6-unicast 2001:db8:2::/48 mp-nh=2001:db8::1,fe80::1 med=1"},
	}, {
		name: "ipv4 in mp_reach and in nlri share a table",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 1, "2001:db8::1", pfx("10.1.0.0/16")), attrsA, nhA), pfx("10.2.0.0/16"))),
		},
		want: []string{
			"198.51.100.1 ipv4-unicast 10.1.0.0/16 mp-nh=2001:db8::1 med=1",
			"198.51.100.1 ipv4-unicast 10.2.0.0/16 nh=198.51.100.254 med=1",
		},
	}, {
		name: "multicast",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 2, "198.51.100.9", pfx("232.0.0.0/8")), attrsA), nil)),
			rm(hdrV4, update(nil, cat(mpReach(2, 2, "2001:db8::9", pfx("ff3e::/16")), attrsA), nil)),
		},
		want: []string{
			"198.51.100.1 ipv4-multicast 232.0.0.0/8 mp-nh=198.51.100.9 med=1",
			"198.51.100.1 ipv6-multicast ff3e::/16 mp-nh=2001:db8::9 med=1",
		},
	}, {
		name: "labeled unicast: label kept, withdrawal's label ignored",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9",
				lpfx(label(100, true), nil, "10.0.0.0/8"), lpfx(label(101, true), nil, "10.1.0.0/16")), attrsA), nil)),
			rm(hdrV4, update(nil, cat(mpReach(2, 4, "2001:db8::9", lpfx(label(200, true), nil, "2001:db8::/32")), attrsA), nil)),
			rm(hdrV4, update(nil, mpUnreach(1, 4, lpfx(withdrawLabel, nil, "10.1.0.0/16")), nil)),
		},
		want: []string{
			"198.51.100.1 ipv4-labeled-unicast 10.0.0.0/8 label=000641 mp-nh=198.51.100.9 med=1",
			"198.51.100.1 ipv6-labeled-unicast 2001:db8::/32 label=000c81 mp-nh=2001:db8::9 med=1",
		},
	}, {
		name: "labeled unicast: a new label replaces the old",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(label(100, true), nil, "10.0.0.0/8")), attrsA), nil)),
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(label(300, true), nil, "10.0.0.0/8")), attrsA), nil)),
		},
		want: []string{"198.51.100.1 ipv4-labeled-unicast 10.0.0.0/8 label=0012c1 mp-nh=198.51.100.9 med=1"},
	}, {
		name: "labeled unicast: a label stack with Multiple Labels",
		msgs: [][]byte{
			peerUp(hdrV4, append(slices.Clone(allMP), capML(1, 4, 3)), append(slices.Clone(allMP), capML(1, 4, 2))),
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(cat(label(16, false), label(17, true)), nil, "10.0.0.0/8")), attrsA), nil)),
		},
		want: []string{"198.51.100.1 ipv4-labeled-unicast 10.0.0.0/8 label=000100000111 mp-nh=198.51.100.9 med=1"},
	}, {
		name: "labeled unicast: Multiple Labels in one OPEN only, one label",
		msgs: [][]byte{
			peerUp(hdrV4, append(slices.Clone(allMP), capML(1, 4, 3)), allMP),
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(cat(label(16, false), label(17, true)), nil, "10.0.0.0/8")), attrsA), nil)),
		},
		want: []string{"198.51.100.1 ipv4-labeled-unicast 0.1.17.10/32 label=000100 mp-nh=198.51.100.9 med=1"},
	}, {
		name: "labeled unicast: without Multiple Labels, one label",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 4, "198.51.100.9", lpfx(cat(label(16, false), label(17, true)), nil, "10.0.0.0/8")), attrsA), nil)),
		},
		want: []string{"198.51.100.1 ipv4-labeled-unicast 0.1.17.10/32 label=000100 mp-nh=198.51.100.9 med=1"},
	}, {
		name: "vpnv4 and vpnv6: RD and prefix key, label kept",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(mpReach(1, 128, "0.0.0.0,198.51.100.9",
				lpfx(label(100, true), rd(65000, 1), "10.0.0.0/8"), lpfx(label(101, true), rd(65000, 2), "10.0.0.0/8")), attrsA), nil)),
			rm(hdrV4, update(nil, cat(mpReach(2, 128, "0.0.0.0,0.0.0.0,2001:db8::9",
				lpfx(label(200, true), rd(65000, 1), "2001:db8::/32")), attrsA), nil)),
			rm(hdrV4, update(nil, mpUnreach(1, 128, lpfx(withdrawLabel, rd(65000, 2), "10.0.0.0/8")), nil)),
		},
		want: []string{
			"198.51.100.1 ipv4-vpn rd=0000fde800000001 10.0.0.0/8 label=000641 mp-nh=00000000c6336409 med=1",
			"198.51.100.1 ipv6-vpn rd=0000fde800000001 2001:db8::/32 label=000c81 mp-nh=000000000000000020010db8000000000000000000000009 med=1",
		},
	}, {
		name: "add-path: one prefix, two paths",
		msgs: [][]byte{
			peerUp(hdrV4, [][]byte{capMP(1, 1), capAP(apEntry{1, 1, apReceive})}, [][]byte{capMP(1, 1), capAP(apEntry{1, 1, apSend})}),
			rm(hdrV4, update(nil, cat(attrsA, nhA), cat(pfxID(1, "10.0.0.0/8"), pfxID(2, "10.0.0.0/8")))),
			rm(hdrV4, update(nil, cat(attrsB, nhA), pfxID(2, "10.0.0.0/8"))),
			rm(hdrV4, update(pfxID(1, "10.0.0.0/8"), cat(attrsA, nhA), pfxID(3, "10.0.0.0/8"))),
		},
		want: []string{
			"198.51.100.1 ipv4-unicast 10.0.0.0/8#2 nh=198.51.100.254 med=2",
			"198.51.100.1 ipv4-unicast 10.0.0.0/8#3 nh=198.51.100.254 med=1",
		},
	}, {
		name: "add-path on vpnv4: path id before the labeled, RD'd prefix",
		msgs: [][]byte{
			peerUp(hdrV4, [][]byte{capMP(1, 128), capAP(apEntry{1, 128, 3})}, [][]byte{capMP(1, 128), capAP(apEntry{1, 128, 3})}),
			rm(hdrV4, update(nil, cat(mpReach(1, 128, "0.0.0.0,198.51.100.9",
				cat(u32(1), lpfx(label(100, true), rd(65000, 1), "10.0.0.0/8")),
				cat(u32(2), lpfx(label(101, true), rd(65000, 1), "10.0.0.0/8"))), attrsA), nil)),
			rm(hdrV4, update(nil, mpUnreach(1, 128, cat(u32(1), lpfx(withdrawLabel, rd(65000, 1), "10.0.0.0/8"))), nil)),
		},
		want: []string{"198.51.100.1 ipv4-vpn rd=0000fde800000001 10.0.0.0/8#2 label=000651 mp-nh=00000000c6336409 med=1"},
	}, {
		name: "extended optional parameters (RFC 9072) in the OPENs",
		msgs: [][]byte{
			peerUpMsg(hdrV4, openMsgExt(65000, "203.0.113.254", capMP(1, 1), capAP(apEntry{1, 1, apReceive})),
				openMsgExt(65001, "198.51.100.1", capMP(1, 1), capAP(apEntry{1, 1, apSend}))),
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfxID(4, "10.0.0.0/8"))),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8#4 nh=198.51.100.254 med=1"},
	}, {
		name: "pre- and post-policy are separate RIBs of one peer",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			rm(post, update(nil, cat(attrsB, nhA), pfx("10.0.0.0/8"))),
			rm(post, update(nil, cat(attrsB, nhA), pfx("10.9.0.0/16"))),
			rm(hdrV4, update(pfx("10.0.0.0/8"), nil, nil)),
		},
		want: []string{
			"198.51.100.1/post ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=2",
			"198.51.100.1/post ipv4-unicast 10.9.0.0/16 nh=198.51.100.254 med=2",
		},
	}, {
		name: "adj-rib-out (O flag) apart from adj-rib-in",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			rm(hdrV4.with(flagO), update(nil, cat(attrsB, nhA), pfx("10.0.0.0/8"))),
		},
		want: []string{
			"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1",
			"198.51.100.1/out ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=2",
		},
	}, {
		name: "loc-rib peer",
		msgs: [][]byte{
			peerUp(hdrLocRIB, allMP, allMP),
			rm(hdrLocRIB, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
		},
		want: []string{"loc-rib ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}, {
		name: "legacy AS_PATH (A flag) kept as received",
		msgs: [][]byte{
			peerUp(hdrLegacy, nil, nil),
			rm(hdrLegacy, update(nil, cat(origin(), attr(0x40, 2, []byte{2, 2, 0xfd, 0xef, 0x5b, 0xa0}), nhA), pfx("10.0.0.0/8"))),
		},
		want: []string{"198.51.100.7 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254"},
	}, {
		name: "peer down removes the peer and its routes",
		msgs: [][]byte{up, peerUp(hdrV6, allMP, allMP),
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			rm(post, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			rm(hdrV6, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			peerDown(hdrV4),
		},
		want: []string{"2001:db8::2 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}, {
		name: "peer down with view flags finds the peer",
		msgs: [][]byte{up,
			rm(post, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			peerDown(post),
		},
	}, {
		name: "peer up again: the session restarted, old routes dropped",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.1.0.0/16"))),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.1.0.0/16 nh=198.51.100.254 med=1"},
	}, {
		name: "peer down of a peer not up is ignored",
		msgs: [][]byte{up, rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))), peerDown(hdrV6)},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}, {
		name: "statistics, mirroring and unknown TLVs change nothing",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			bmpMsg(bmp.TypeStatisticsReport, hdrV4.bytes(), u32(1), u16(7), u16(4), u32(9)),
			bmpMsg(bmp.TypeRouteMirroring, hdrV4.bytes(), u16(0), u16(4), u32(0)),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}, {
		name: "termination: nothing after it is kept",
		msgs: [][]byte{up,
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.0.0.0/8"))),
			termination(),
			rm(hdrV4, update(nil, cat(attrsA, nhA), pfx("10.1.0.0/16"))),
		},
		want: []string{"198.51.100.1 ipv4-unicast 10.0.0.0/8 nh=198.51.100.254 med=1"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRouter(nil, "router test")
			feedAll(r, 1<<20, append([][]byte{initiation("r1")}, tt.msgs...)...)
			if st := r.Status(); st.State != Keeping {
				t.Fatalf("status %v: %v", st.State, st.Err)
			}
			if got := brief(r); !slices.Equal(got, tt.want) {
				t.Fatalf("routes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			checkRoundTrip(t, r)
		})
	}
}

// checkRoundTrip replays r into a new Router and requires the same state.
func checkRoundTrip(t *testing.T, r *Router) {
	t.Helper()
	replay := readSnapshot(t, r)
	r2 := NewRouter(nil, "replay")
	r2.Feed(replay)
	if a, b := dump(r), dump(r2); a != b {
		t.Fatalf("replayed state differs:\n%s\n---- replay:\n%s", a, b)
	}
}

func readSnapshot(t testing.TB, r *Router) []byte {
	t.Helper()
	s, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out []byte
	buf := make([]byte, 1000)
	for {
		n, err := s.Read(buf)
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestEndOfRIB(t *testing.T) {
	r := NewRouter(nil, "router test")
	feedAll(r, 1<<20, initiation("r1"), peerUp(hdrV4, allMP, allMP),
		rm(hdrV4, update(nil, nil, nil)),
		rm(hdrV4, update(nil, mpUnreach(2, 1), nil)),
		rm(hdrV4, update(nil, mpUnreach(25, 70), nil)), // EVPN End-of-RIB: no routes, nothing to key
	)
	if st := r.Status(); st.State != Keeping {
		t.Fatal(st.Err)
	}
	st := r.Stats()
	var fams []string
	for _, ts := range st.Tables {
		fams = append(fams, ts.Family.String())
		if ts.Routes != 0 {
			t.Errorf("%s has %d routes", ts.Family, ts.Routes)
		}
	}
	if want := []string{"ipv4-unicast", "ipv6-unicast"}; !slices.Equal(fams, want) {
		t.Fatalf("tables %v, want %v", fams, want)
	}
	// The replay is Initiation, Peer Up and one End-of-RIB per table.
	msgs := split(t, readSnapshot(t, r))
	if len(msgs) != 4 {
		t.Fatalf("%d replay messages, want 4", len(msgs))
	}
	if eor := msgs[2][bmp.HeaderLen+perPeerLen:]; len(eor) != 23 {
		t.Errorf("IPv4 End-of-RIB is %d bytes, want 23", len(eor))
	}
	if eor := msgs[3][bmp.HeaderLen+perPeerLen+bgpHdrLen:]; !slices.Equal(eor, []byte{0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1}) {
		t.Errorf("IPv6 End-of-RIB body % x", eor)
	}
	checkRoundTrip(t, r)
}

// split frames a BMP stream.
func split(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		m, rest, err := bmp.Split(b, 0)
		if err != nil || m == nil {
			t.Fatalf("replay does not frame: %v (%d bytes left)", err, len(b))
		}
		out, b = append(out, m), rest
	}
	return out
}
