package rib

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
)

// A generator of realistic BMP streams for the round-trip, concurrency and
// fuzz tests and the benchmarks: several kinds of peers, many NLRI per
// UPDATE, shared attribute sets, then churn.

var (
	hdrV4     = peerHdr{addr: "198.51.100.1", as: 65001, id: "198.51.100.1", ts: 1}
	hdrV6     = peerHdr{addr: "2001:db8::2", as: 4200000002, id: "198.51.100.2", ts: 2}
	hdrAP     = peerHdr{addr: "198.51.100.3", as: 65003, id: "198.51.100.3"}
	hdrRD     = peerHdr{typ: 1, rd: 65000<<32 | 7, addr: "198.51.100.4", as: 65004, id: "198.51.100.4"}
	hdrOut    = peerHdr{addr: "198.51.100.5", as: 65005, id: "198.51.100.5"}
	hdrLocRIB = peerHdr{typ: peerLocRIB, as: 65000, id: "203.0.113.254"}
	hdrExt    = peerHdr{addr: "2001:db8::6", as: 65006, id: "198.51.100.6"}
	hdrLegacy = peerHdr{addr: "198.51.100.7", flags: flagA, as: 65007, id: "198.51.100.7"}
)

// genAttrs returns n distinct attribute sets (without next hop).
func genAttrs(rng *rand.Rand, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		path := []uint32{65001, uint32(64512 + rng.IntN(1000)), uint32(1 + rng.IntN(400000))}
		out[i] = cat(origin(), asPath(path...), med(uint32(i)), community(uint32(65001)<<16|uint32(rng.IntN(65536))))
	}
	return out
}

func randV4(rng *rand.Rand) string {
	bits := []int{24, 24, 24, 24, 23, 22, 21, 20, 19, 16}[rng.IntN(10)]
	a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, rng.Uint32())))
	p, _ := a.Prefix(bits)
	return p.String()
}

func randV6(rng *rand.Rand) string {
	bits := []int{48, 48, 48, 44, 40, 36, 32, 29, 56, 64}[rng.IntN(10)]
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], 0x2001_0db8_0000_0000|rng.Uint64()&0x0000_0000_ffff_ffff)
	binary.BigEndian.PutUint64(b[8:], rng.Uint64())
	p, _ := netip.AddrFrom16(b).Prefix(bits)
	return p.String()
}

// genStream returns a stream of messages: Initiation, eight kinds of peers,
// routes per family, End-of-RIBs, then withdrawals, re-announcements,
// statistics and a Peer Down. scale is the number of routes per table.
func genStream(seed uint64, scale int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	attrs := genAttrs(rng, 20)
	pick := func() []byte { return attrs[rng.IntN(len(attrs))] }
	var msgs [][]byte
	add := func(m ...[]byte) { msgs = append(msgs, m...) }
	add(initiation("gen"))
	allMP := [][]byte{capMP(1, 1), capMP(2, 1), capMP(1, 4), capMP(2, 4), capMP(1, 128), capMP(2, 128)}
	add(peerUp(hdrV4, allMP, allMP))
	add(peerUp(hdrV6, allMP, allMP))
	ap := capAP(apEntry{1, 1, 3}, apEntry{2, 1, 3}, apEntry{1, 128, 3})
	add(peerUp(hdrAP, append(allMP, ap), append(allMP, ap)))
	add(peerUp(hdrRD, allMP, allMP))
	add(peerUp(hdrOut, append(allMP, capAP(apEntry{1, 1, apSend})), append(allMP, capAP(apEntry{1, 1, apReceive}))))
	add(peerUp(hdrLocRIB, append(allMP, capAP(apEntry{2, 1, apSend})), append(allMP, capAP(apEntry{2, 1, apSend}))))
	add(peerUp(hdrExt, append(allMP, capExt()), append(allMP, capExt())))
	add(peerUp(hdrLegacy, nil, nil))

	var v4s, v6s []string
	for range scale {
		v4s = append(v4s, randV4(rng))
		v6s = append(v6s, randV6(rng))
	}
	ipv4 := func(h peerHdr, ap bool, routes []string, per int) {
		for i := 0; i < len(routes); i += per {
			var nl []byte
			for j, p := range routes[i:min(i+per, len(routes))] {
				if ap {
					nl = append(nl, pfxID(uint32(j%3+1), p)...)
				} else {
					nl = append(nl, pfx(p)...)
				}
			}
			add(rm(h, update(nil, cat(pick(), nextHop("198.51.100.254")), nl)))
		}
		add(rm(h, update(nil, nil, nil)))
	}
	mp := func(h peerHdr, afi int, safi byte, nh string, ap bool, routes []string, per int) {
		for i := 0; i < len(routes); i += per {
			var nl []byte
			for j, p := range routes[i:min(i+per, len(routes))] {
				var one []byte
				switch safi {
				case safiVPN:
					one = lpfx(label(uint32(1000+j), true), rd(65000, uint32(j%4)), p)
				case safiLabeled:
					one = lpfx(label(uint32(2000+j), true), nil, p)
				default:
					one = pfx(p)
				}
				if ap {
					one = append(u32(uint32(j%2+1)), one...)
				}
				nl = append(nl, one...)
			}
			add(rm(h, update(nil, cat(mpReach(afi, safi, nh, nl), pick()), nil)))
		}
		add(rm(h, update(nil, mpUnreach(afi, safi), nil)))
	}
	n := scale
	ipv4(hdrV4, false, v4s, 200)
	ipv4(hdrV4.with(flagL), false, v4s[:n/2], 150)
	mp(hdrV4, 2, 1, "2001:db8::1,fe80::1", false, v6s, 120)
	ipv4(hdrV6, false, v4s, 300)
	mp(hdrV6, 2, 1, "2001:db8::2", false, v6s, 100)
	mp(hdrV6, 1, 4, "198.51.100.2", false, v4s[:n/2], 100)
	mp(hdrV6, 2, 4, "2001:db8::2", false, v6s[:n/2], 100)
	ipv4(hdrAP, true, v4s, 250)
	mp(hdrAP, 2, 1, "2001:db8::3", true, v6s, 90)
	mp(hdrAP, 1, 128, "0.0.0.0,198.51.100.3", true, v4s[:n/3], 80)
	mp(hdrRD, 1, 128, "0.0.0.0,198.51.100.4", false, v4s[:n/2], 80)
	mp(hdrRD, 2, 128, "0.0.0.0,0.0.0.0,2001:db8::4", false, v6s[:n/2], 60)
	ipv4(hdrOut.with(flagO), true, v4s[:n/2], 200)
	ipv4(hdrOut.with(flagO|flagL), true, v4s[:n/3], 200)
	mp(hdrLocRIB, 2, 1, "2001:db8::fe", true, v6s, 100)
	ipv4(hdrLocRIB, false, v4s, 400)
	ipv4(hdrExt, false, v4s, 2000)
	mp(hdrExt, 2, 1, "2001:db8::6", false, v6s, 1500)
	ipv4(hdrLegacy, false, v4s[:n/4], 100)

	// Churn: withdrawals, re-announcements with other attributes, both in
	// one UPDATE, statistics, a Peer Down and a peer that comes back.
	var wd []byte
	for _, p := range v4s[:n/5] {
		wd = append(wd, pfx(p)...)
	}
	for i := 0; i < len(wd); {
		j := i
		for j < len(wd) && j-i < 800 {
			j += 1 + (int(wd[j])+7)/8
		}
		add(rm(hdrV4, update(wd[i:j], nil, nil)))
		i = j
	}
	var wd6 []byte
	for _, p := range v6s[:n/5] {
		wd6 = append(wd6, pfx(p)...)
	}
	add(rm(hdrV6, update(nil, mpUnreach(2, 1, wd6[:min(len(wd6), 3000)]), nil)))
	add(rm(hdrV6, update(cat(pfx(v4s[0])), cat(pick(), nextHop("198.51.100.253")), cat(pfx(v4s[1]), pfx(v4s[0])))))
	add(bmpMsg(1, hdrV4.bytes(), u32(1), u16(7), u16(4), u32(99)))
	add(rm(hdrAP, update(nil, cat(mpReach(2, 1, "2001:db8::33", pfxID(9, v6s[2])), mpUnreach(2, 1, pfxID(1, v6s[0]))), nil)))
	add(peerDown(hdrRD))
	add(peerDown(hdrLegacy))
	add(peerUp(hdrLegacy, nil, nil))
	ipv4(hdrLegacy, false, v4s[:n/8], 50)
	add(rm(hdrV6, update(nil, mpUnreach(1, 4, lpfx([]byte{0x80, 0, 0}, nil, v4s[0])), nil)))
	return msgs
}
