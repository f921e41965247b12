package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The resync phase's routes. FRR originates its prefixes with `network`
// statements, GoBGP the bulk of its own from an MRT table dump and a few
// with `gobgp global rib add`, which are the ones it can withdraw. The
// prefixes are BGP data only: bgpd runs without zebra and GoBGP has no
// FIB, so none of them reaches a kernel's routing table. IPv4 ones are
// /27s of the benchmarking range 198.18.0.0/15, IPv6 ones /48s of
// 2001:db8::/32.
const (
	frrV4   = 2000 // frr4(0..frrV4-1)
	frrV6   = 1000 // frr6(0..frrV6-1)
	mrtV4   = 1000 // gobgp4(0..mrtV4-1)
	mrtV6   = 1000 // gobgp6(0..mrtV6-1)
	cliBase = 1500 // gobgp4/6(cliBase..cliBase+cliN-1): added one by one
	cliN    = 10

	asFRR   = 65001
	asGoBGP = 65002
)

func nth27(second byte, i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, second, byte(i / 8), byte(i % 8 * 32)}), 27)
}

func nth48(base uint16, i int) netip.Prefix {
	v := base | uint16(i)
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(v >> 8), byte(v)}), 48)
}

func frr4(i int) netip.Prefix   { return nth27(18, i) }
func frr6(i int) netip.Prefix   { return nth48(0xa000, i) }
func gobgp4(i int) netip.Prefix { return nth27(19, i) }
func gobgp6(i int) netip.Prefix { return nth48(0xb000, i) }

// The routers as BMP senders to the resync listener, and their BGP
// sessions with each other.
const (
	frrBMP   = "198.51.100.2"   // FRR's BMP source
	gobgpBMP = "198.51.100.130" // GoBGP's
	frrV4NH  = "203.0.113.1"    // FRR's end of the IPv4 session
	gobV4NH  = "203.0.113.2"    // GoBGP's
	gobV6NH  = "2001:db8:12::2" // GoBGP's end of the IPv6 session
)

// change is one route a router originates, withdraws or changes: attrs
// is FRR's route-map, or GoBGP's `rib add` attributes; med is the MED it
// gives the route (0 if none).
type change struct {
	router   string // "frr" or "gobgp", the originator
	withdraw bool
	prefix   netip.Prefix
	attrs    string
	med      int
}

// frrNetwork is FRR's initial `network` statement for i: every tenth has
// a community.
func frrNetwork(p netip.Prefix, i int) change {
	c := change{router: "frr", prefix: p}
	if i%10 == 0 {
		c.attrs = "rm-c1"
	}
	return c
}

// initial is what the routers originate from the start.
func initial() []change {
	var out []change
	for i := range frrV4 {
		out = append(out, frrNetwork(frr4(i), i))
	}
	for i := range frrV6 {
		out = append(out, frrNetwork(frr6(i), i))
	}
	for i := range mrtV4 {
		out = append(out, change{router: "gobgp", prefix: gobgp4(i), med: mrtMED(i)})
	}
	for i := range mrtV6 {
		out = append(out, change{router: "gobgp", prefix: gobgp6(i), med: mrtMED(i)})
	}
	for i := cliBase; i < cliBase+cliN; i++ {
		out = append(out, change{router: "gobgp", prefix: gobgp4(i)}, change{router: "gobgp", prefix: gobgp6(i)})
	}
	return out
}

// The churn: "outage" while pmbmpd A is down, which its replay must
// carry; "live" after it is back, which reaches it as live Route
// Monitoring. Each withdraws, announces new prefixes and changes the
// attributes of prefixes that stay.
func churn(step string) []change {
	var out []change
	frrRange := func(f func(int) netip.Prefix, from, to int, withdraw bool) {
		for i := from; i < to; i++ {
			c := frrNetwork(f(i), i)
			c.withdraw = withdraw
			out = append(out, c)
		}
	}
	gob := func(f func(int) netip.Prefix, from, to int, withdraw bool, attrs string, med int) {
		for i := from; i < to; i++ {
			out = append(out, change{router: "gobgp", prefix: f(i), withdraw: withdraw, attrs: attrs, med: med})
		}
	}
	switch step {
	case "outage":
		frrRange(frr4, 0, 100, true)
		frrRange(frr6, 0, 50, true)
		frrRange(frr4, frrV4, frrV4+20, false)
		frrRange(frr6, frrV6, frrV6+20, false)
		out = append(out, change{router: "frr", prefix: frr4(500), attrs: "rm-med", med: 77})
		gob(gobgp4, cliBase, cliBase+4, true, "", 0)
		gob(gobgp6, cliBase, cliBase+4, true, "", 0)
		gob(gobgp4, cliBase+4, cliBase+5, false, "med 50 community 65002:50", 50)
		gob(gobgp4, 1600, 1604, false, "", 0)
		gob(gobgp6, 1600, 1604, false, "", 0)
	case "live":
		frrRange(frr4, 100, 150, true)
		frrRange(frr6, 50, 75, true)
		frrRange(frr4, frrV4+20, frrV4+30, false)
		out = append(out, change{router: "frr", prefix: frr6(500), attrs: "rm-med", med: 77})
		gob(gobgp4, cliBase+5, cliBase+7, true, "", 0)
		gob(gobgp6, cliBase+4, cliBase+5, false, "med 70", 70)
		gob(gobgp4, 1604, 1606, false, "", 0)
	}
	return out
}

// mrtMED is the MED of GoBGP's i-th MRT route: sixteen values, and with
// some a community (see mrtDump), so that routes share a few attribute
// sets.
func mrtMED(i int) int { return i%16 + 1 }

// expected is, for each (receiving router, prefix), the MED its route
// must carry, or -1 if the prefix must be absent, after the initial
// routes and the given churn steps.
func expected(steps ...string) map[string]map[netip.Prefix]int {
	out := map[string]map[netip.Prefix]int{frrBMP: {}, gobgpBMP: {}}
	apply := func(cs []change) {
		for _, c := range cs {
			at := receiver(c)
			if c.withdraw {
				out[at][c.prefix] = -1
			} else {
				out[at][c.prefix] = c.med
			}
		}
	}
	apply(initial())
	for _, s := range steps {
		apply(churn(s))
	}
	return out
}

// receiver is the router whose BMP reports c: each reports what it
// receives, so FRR's routes appear at GoBGP and GoBGP's at FRR.
func receiver(c change) string {
	if c.router == "frr" {
		return gobgpBMP
	}
	return frrBMP
}

// planSummary says what the routers carry, for run.sh's heading.
func planSummary() string {
	return fmt.Sprintf("FRR originates %d IPv4 and %d IPv6 prefixes, GoBGP %d and %d",
		frrV4+1, frrV6+2, mrtV4+cliN, mrtV6+cliN)
}

// printPlan writes one part of the routers' set-up to w: a summary, or
// FRR's network statements (frr-ipv4, frr-ipv6).
func printPlan(w io.Writer, part string) error {
	cs := initial()
	switch part {
	case "":
		_, err := fmt.Fprintln(w, planSummary())
		return err
	case "frr-ipv4", "frr-ipv6":
		for _, c := range cs {
			if c.router == "frr" && c.prefix.Addr().Is4() == (part == "frr-ipv4") {
				fmt.Fprintf(w, "  %s\n", frrLine(c))
			}
		}
		return nil
	}
	return fmt.Errorf("-print: unknown part %q (want frr-ipv4 or frr-ipv6)", part)
}

func frrLine(c change) string {
	s := "network " + c.prefix.String()
	if c.withdraw {
		return "no " + s
	}
	if c.attrs != "" {
		s += " route-map " + c.attrs
	}
	return s
}

func gobgpArgs(c change) []string {
	fam, nh := "ipv4", gobV4NH
	if c.prefix.Addr().Is6() {
		fam, nh = "ipv6", gobV6NH
	}
	if c.withdraw {
		return []string{"global", "rib", "del", "-a", fam, c.prefix.String()}
	}
	args := []string{"global", "rib", "add", "-a", fam, c.prefix.String(), "nexthop", nh}
	return append(args, strings.Fields(c.attrs)...)
}

// loadGoBGP gives GoBGP its initial routes: those with a MED by `gobgp
// mrt inject`, until its RIB has every one (gobgp 3.10's inject drops
// the last few dozen routes of its stream, so each round sends what is
// missing followed by every route again, as padding that changes
// nothing); then the others one by one with `gobgp global rib add`.
func loadGoBGP(o options) error {
	var mrt, cli []change
	for _, c := range initial() {
		switch {
		case c.router != "gobgp":
		case c.med != 0:
			mrt = append(mrt, c)
		default:
			cli = append(cli, c)
		}
	}
	file := filepath.Join(o.dir, "gobgp.mrt")
	for round := 1; ; round++ {
		have, err := gobgpRIB(o)
		if err != nil {
			return err
		}
		var missing []change
		for _, c := range mrt {
			if !have[c.prefix] {
				missing = append(missing, c)
			}
		}
		if len(missing) == 0 {
			break
		}
		if round > 10 {
			return fmt.Errorf("gobgp mrt inject: after 10 rounds GoBGP still lacks %d of %d routes, such as %s", len(missing), len(mrt), missing[0].prefix)
		}
		if err := os.WriteFile(file, mrtDump(append(missing, mrt...)), 0o644); err != nil {
			return err
		}
		if err := run1("ip", "netns", "exec", o.r2, "gobgp", "mrt", "inject", "global", file); err != nil {
			return err
		}
	}
	for _, c := range cli {
		if err := run1("ip", append([]string{"netns", "exec", o.r2, "gobgp"}, gobgpArgs(c)...)...); err != nil {
			return err
		}
	}
	return nil
}

// gobgpRIB returns the prefixes in GoBGP's global RIB.
func gobgpRIB(o options) (map[netip.Prefix]bool, error) {
	have := map[netip.Prefix]bool{}
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, err := exec.Command("ip", "netns", "exec", o.r2, "gobgp", "global", "rib", "-a", fam).Output()
		if err != nil {
			return nil, fmt.Errorf("gobgp global rib -a %s: %w", fam, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			for _, f := range strings.Fields(l) {
				if p, err := netip.ParsePrefix(f); err == nil {
					have[p] = true
					break
				}
			}
		}
	}
	return have, nil
}

// applyChurn makes the routers originate step's changes: FRR through its
// vty socket, GoBGP through its API in its namespace.
func applyChurn(o options, step string) error {
	cs := churn(step)
	args := []string{"--vty_socket", filepath.Join(o.dir, "frr"), "-d", "bgpd",
		"-c", "configure terminal", "-c", fmt.Sprintf("router bgp %d", asFRR)}
	for _, fam := range []string{"ipv4", "ipv6"} {
		args = append(args, "-c", "address-family "+fam+" unicast")
		for _, c := range cs {
			if c.router == "frr" && c.prefix.Addr().Is4() == (fam == "ipv4") {
				args = append(args, "-c", frrLine(c))
			}
		}
		args = append(args, "-c", "exit-address-family")
	}
	if err := run1("vtysh", args...); err != nil {
		return err
	}
	for _, c := range cs {
		if c.router != "gobgp" {
			continue
		}
		if err := run1("ip", append([]string{"netns", "exec", o.r2, "gobgp"}, gobgpArgs(c)...)...); err != nil {
			return err
		}
	}
	return nil
}

// run1 runs a command; its output is the error's text if it fails, or if
// it prints anything (vtysh reports a refused command on stdout and
// still exits 0).
func run1(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// mrtDump is GoBGP's routes with a MED (the MRT ones) as an MRT
// TABLE_DUMP_V2 file (RFC 6396): a PEER_INDEX_TABLE naming GoBGP itself,
// then a RIB_IPV4_UNICAST or RIB_IPV6_UNICAST record per prefix.
func mrtDump(cs []change) []byte {
	const tableDumpV2, peerIndex, ribV4, ribV6 = 13, 1, 2, 4
	record := func(out []byte, subtype uint16, body []byte) []byte {
		out = binary.BigEndian.AppendUint32(out, 0) // timestamp
		out = binary.BigEndian.AppendUint16(out, tableDumpV2)
		out = binary.BigEndian.AppendUint16(out, subtype)
		out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
		return append(out, body...)
	}
	self := netip.MustParseAddr(gobV4NH).As4()
	pit := append([]byte{}, self[:]...)
	pit = append(pit, 0, 0, 0, 1) // no view name, one peer
	pit = append(pit, 0x02)       // IPv4 address, 4-byte AS
	pit = append(pit, self[:]...) // its BGP ID
	pit = append(pit, self[:]...) // and address
	pit = binary.BigEndian.AppendUint32(pit, asGoBGP)
	out := record(nil, peerIndex, pit)
	seq := uint32(0)
	for _, c := range cs {
		if c.router != "gobgp" || c.med == 0 {
			continue
		}
		attrs := []byte{0x40, 1, 1, 0, 0x40, 2, 0} // ORIGIN IGP, empty AS_PATH
		attrs = append(attrs, 0x80, 4, 4)          // MULTI_EXIT_DISC
		attrs = binary.BigEndian.AppendUint32(attrs, uint32(c.med))
		if c.med%3 == 0 {
			attrs = append(attrs, 0xc0, 8, 4) // COMMUNITIES
			attrs = binary.BigEndian.AppendUint16(attrs, asGoBGP)
			attrs = binary.BigEndian.AppendUint16(attrs, uint16(c.med))
		}
		subtype := uint16(ribV4)
		if c.prefix.Addr().Is4() {
			nh := netip.MustParseAddr(gobV4NH).As4()
			attrs = append(attrs, 0x40, 3, 4)
			attrs = append(attrs, nh[:]...)
		} else {
			// GoBGP reads the full MP_REACH_NLRI here, not RFC 6396's
			// abbreviated form: AFI, SAFI, next hop, reserved, no NLRI.
			subtype = ribV6
			nh := netip.MustParseAddr(gobV6NH).As16()
			attrs = append(attrs, 0x80, 14, 21, 0, 2, 1, 16)
			attrs = append(attrs, nh[:]...)
			attrs = append(attrs, 0)
		}
		b := binary.BigEndian.AppendUint32(nil, seq)
		seq++
		a := c.prefix.Addr().AsSlice()
		b = append(b, byte(c.prefix.Bits()))
		b = append(b, a[:(c.prefix.Bits()+7)/8]...)
		b = binary.BigEndian.AppendUint16(b, 1) // one entry
		b = binary.BigEndian.AppendUint16(b, 0) // peer 0
		b = binary.BigEndian.AppendUint32(b, 0) // originated
		b = binary.BigEndian.AppendUint16(b, uint16(len(attrs)))
		b = append(b, attrs...)
		out = record(out, subtype, b)
	}
	return out
}
