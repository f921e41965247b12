package bmpcheck

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
)

// GenConfig says what Generate builds. Its zero value is a realistic
// stream that ends with about 18,000 routes in seven peers.
type GenConfig struct {
	Seed uint64
	// Prefixes is the size of a full table in the initial dump (default
	// 2000); the other tables are a share of it, at least one prefix.
	Prefixes int
	// AttrSets is the number of distinct attribute sets the routes share
	// (default 40), a few of them by many routes.
	AttrSets int
	// Churn is how many routes of a full table are withdrawn after the
	// dump, and how many re-announced with other attributes (default
	// Prefixes/8).
	Churn int
	// EVPN makes the VPN peer announce and withdraw EVPN routes too, which
	// a State does not key: Expect lists them as unkeyed.
	EVPN bool
	// Malformed adds, before the Peer Down, a Route Monitoring whose
	// AS_PATH runs past the path attributes; Parse stops there with an
	// error. Expect is the state of the stream without it.
	Malformed bool
	// Terminate ends the stream with a Termination.
	Terminate bool
}

func (c GenConfig) withDefaults() GenConfig {
	if c.Prefixes <= 0 {
		c.Prefixes = 2000
	}
	if c.AttrSets <= 0 {
		c.AttrSets = 40
	}
	if c.Churn <= 0 {
		c.Churn = max(1, c.Prefixes/8)
	}
	return c
}

// Message is one generated BMP message.
type Message struct {
	Type  MsgType
	Peer  PeerKey // zero for Initiation and Termination
	Note  string  // what it is for, e.g. "dump ipv4-pre ipv4-unicast", "end-of-rib pe-vpn vpnv4", "peer down legacy", "malformed ipv4-pre"
	Bytes []byte  // the whole BMP message
}

// Generate builds a BMP stream deterministically from cfg: an Initiation;
// Peer Ups of seven peers (IPv4 and IPv6 addresses, pre- and post-policy of
// one session, an Adj-RIB-Out and a Loc-RIB peer, ADD-PATH for some
// AFI/SAFIs and, by direction, not for others, extended messages on two, a
// legacy 2-byte AS_PATH one); the initial dump of IPv4 and IPv6 unicast and
// multicast, labeled unicast and VPNv4/VPNv6, many NLRI per UPDATE sharing
// a limited number of attribute sets, interleaved across peers, with an
// End-of-RIB per table; Statistics Reports; then withdrawals and
// re-announcements with other attributes, an RD-instance peer that comes up
// and dumps its table, a Route Mirroring, the Peer Down of the legacy peer,
// and more churn.
func Generate(cfg GenConfig) []Message {
	msgs, _ := generate(cfg)
	return msgs
}

// Expect is the state after Generate(cfg)'s stream, as the generator
// tracked it while emitting the messages.
func Expect(cfg GenConfig) *State {
	_, s := generate(cfg)
	return s
}

// Encode is the stream of msgs.
func Encode(msgs []Message) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(out, m.Bytes...)
	}
	return out
}

// The monitored router.
const (
	routerAS  = 64500
	asTrans   = 23456
	extMaxMsg = 12000 // UPDATEs on an extended-message session reach this
)

func routerID() netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, 254}) }

type tableSpec struct {
	family Family
	share  float64 // of GenConfig.Prefixes
	// addPath is whether the table's routes carry path ids; the modes are
	// the ADD-PATH Send/Receive values the router's and the peer's OPENs
	// carry for the family (0: none), which must agree with it.
	addPath              bool
	routerMode, peerMode uint8
}

type peerSpec struct {
	name       string
	key        PeerKey
	ibgp       bool
	legacy     bool // the peer's OPEN has no 4-byte AS capability
	extended   bool // both OPENs offer extended messages
	late       bool // comes up after the initial dump
	goesDown   bool
	vpnPE      bool // the one that announces EVPN if asked
	local      netip.Addr
	localPort  uint16
	remotePort uint16
	info       []TLV
	nextHops4  []netip.Addr
	nextHops6  [][]byte
	tables     []tableSpec
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func peerSpecs() []peerSpec {
	v4 := addr("198.51.100.254")
	v4b := addr("203.0.113.254")
	v6 := addr("2001:db8::fe")
	nh6 := func(n ...string) [][]byte {
		var out [][]byte
		for _, s := range n {
			out = append(out, addr(s).AsSlice())
		}
		return out
	}
	return []peerSpec{
		{
			name: "ipv4-pre", key: PeerKey{Address: addr("198.51.100.1"), AS: 64501, BGPID: addr("198.51.100.1")},
			local: v4, localPort: 179, remotePort: 40001,
			nextHops4: []netip.Addr{addr("198.51.100.1"), addr("198.51.100.11"), addr("198.51.100.12")},
			nextHops6: nh6("2001:db8:1::1", "2001:db8:1::11"),
			tables: []tableSpec{
				{family: IPv4Unicast, share: 1, addPath: true, routerMode: addPathReceive, peerMode: addPathSend},
				// Both only receive: no ADD-PATH.
				{family: IPv6Unicast, share: 0.5, routerMode: addPathReceive, peerMode: addPathReceive},
			},
		},
		{
			name: "ipv4-post", key: PeerKey{Flags: FlagL, Address: addr("198.51.100.1"), AS: 64501, BGPID: addr("198.51.100.1")},
			local: v4, localPort: 179, remotePort: 40001,
			nextHops4: []netip.Addr{addr("198.51.100.1"), addr("198.51.100.11")},
			nextHops6: nh6("2001:db8:1::1"),
			tables: []tableSpec{
				{family: IPv4Unicast, share: 0.6, addPath: true, routerMode: addPathReceive, peerMode: addPathSend},
				{family: IPv6Unicast, share: 0.3, routerMode: addPathReceive, peerMode: addPathReceive},
			},
		},
		{
			name: "ipv6-ext", key: PeerKey{Flags: FlagV, Address: addr("2001:db8::3"), AS: 4200000003, BGPID: addr("198.51.100.3")},
			local: v6, localPort: 38003, remotePort: 179, extended: true,
			nextHops4: []netip.Addr{addr("198.51.100.3")},
			nextHops6: [][]byte{
				append(addr("2001:db8::3").AsSlice(), addr("fe80::3").AsSlice()...),
				append(addr("2001:db8::33").AsSlice(), addr("fe80::3").AsSlice()...),
			},
			tables: []tableSpec{
				{family: IPv6Unicast, share: 1, addPath: true, routerMode: addPathSend | addPathReceive, peerMode: addPathSend | addPathReceive},
				{family: IPv4Unicast, share: 0.5},
				{family: IPv6Multicast, share: 0.1},
			},
		},
		{
			name: "legacy", key: PeerKey{Flags: FlagA, Address: addr("203.0.113.4"), AS: 64504, BGPID: addr("203.0.113.4")},
			local: v4b, localPort: 179, remotePort: 40004, legacy: true, goesDown: true,
			nextHops4: []netip.Addr{addr("203.0.113.4"), addr("203.0.113.44")},
			tables: []tableSpec{
				{family: IPv4Unicast, share: 0.8},
				{family: IPv4Multicast, share: 0.1},
			},
		},
		{
			name: "pe-vpn", key: PeerKey{Flags: FlagV, Address: addr("2001:db8::5"), AS: routerAS, BGPID: addr("198.51.100.5")},
			local: v6, localPort: 179, remotePort: 40005, ibgp: true, vpnPE: true, extended: true,
			nextHops4: []netip.Addr{addr("198.51.100.5"), addr("198.51.100.55")},
			nextHops6: nh6("2001:db8::5", "2001:db8::55"),
			tables: []tableSpec{
				{family: VPNv4, share: 0.5, addPath: true, routerMode: addPathReceive, peerMode: addPathSend},
				{family: VPNv6, share: 0.3},
				{family: IPv4Labeled, share: 0.25},
				{family: IPv6Labeled, share: 0.1},
			},
		},
		{
			name: "adj-rib-out", key: PeerKey{Flags: FlagO, Address: addr("203.0.113.6"), AS: 64506, BGPID: addr("203.0.113.6")},
			local: v4b, localPort: 179, remotePort: 40006,
			nextHops4: []netip.Addr{v4b},
			nextHops6: nh6("2001:db8::fe"),
			tables: []tableSpec{
				// The router sends and the peer receives: in use out.
				{family: IPv4Unicast, share: 0.7, addPath: true, routerMode: addPathSend, peerMode: addPathReceive},
				// The peer sends and the router receives: in use in only.
				{family: IPv6Unicast, share: 0.3, routerMode: addPathReceive, peerMode: addPathSend},
			},
		},
		{
			name: "loc-rib", key: PeerKey{Type: PeerLocRIB, Address: addr("0.0.0.0"), AS: routerAS, BGPID: routerID()},
			local: addr("0.0.0.0"), info: []TLV{{Type: 3, Value: "global"}},
			nextHops4: []netip.Addr{addr("198.51.100.1"), addr("198.51.100.3"), addr("203.0.113.4")},
			nextHops6: nh6("2001:db8::3", "2001:db8:1::1"),
			tables: []tableSpec{
				{family: IPv4Unicast, share: 1},
				// RFC 9069: the fabricated OPEN's capability, any mode.
				{family: IPv6Unicast, share: 0.5, addPath: true, routerMode: addPathReceive},
			},
		},
		{
			name: "vrf-late", key: PeerKey{Type: PeerRD, Distinguisher: RD{0, 0, 0xfb, 0xf4, 0, 0, 0, 10}, Address: addr("198.51.100.8"), AS: 64508, BGPID: addr("198.51.100.8")},
			local: v4, localPort: 179, remotePort: 40008, late: true,
			nextHops4: []netip.Addr{addr("198.51.100.8")},
			tables:    []tableSpec{{family: IPv4Unicast, share: 0.3}},
		},
	}
}

// attrSet is one of the shared sets of attributes, before a peer's
// encoding: its AS, AS_PATH size and next hops.
type attrSet struct {
	origin      uint8
	path        []uint32
	asSet       []uint32
	med         uint32
	hasMED      bool
	localPref   uint32
	communities []uint32
	large       [][3]uint32
	aggregator  bool
	nextHop     int // index into the peer's next hops
	routeTarget uint32
}

type genPeer struct {
	spec   peerSpec
	up     PeerUp
	tables []*genTable
	state  *Peer // in the expected state while the peer is up
	canon  map[canonKey]Attrs
}

type canonKey struct {
	family Family
	set    int
}

// genTable is a table as the generator built it. routes is the expected
// state's table; live lists its keys in a deterministic order.
type genTable struct {
	spec   tableSpec
	size   int
	routes map[RouteKey]Route
	sets   map[RouteKey]int
	live   []RouteKey
	pos    map[RouteKey]int
	gone   []RouteKey
	used   map[RouteKey]bool // prefixes (with RD) ever announced
}

func (t *genTable) add(k RouteKey, r Route, set int) {
	if _, ok := t.pos[k]; !ok {
		t.pos[k] = len(t.live)
		t.live = append(t.live, k)
	}
	t.routes[k], t.sets[k] = r, set
}

func (t *genTable) remove(k RouteKey) {
	i := t.pos[k]
	last := t.live[len(t.live)-1]
	t.live[i], t.pos[last] = last, i
	t.live = t.live[:len(t.live)-1]
	delete(t.pos, k)
	delete(t.routes, k)
	delete(t.sets, k)
	t.gone = append(t.gone, k)
}

// entry is a route to announce.
type entry struct {
	key    RouteKey
	set    int
	labels Labels
}

type generator struct {
	cfg  GenConfig
	rng  *rand.Rand
	ts   uint32
	out  *[]Message
	want *State
	sets []attrSet
}

func generate(cfg GenConfig) ([]Message, *State) {
	cfg = cfg.withDefaults()
	var msgs []Message
	g := &generator{
		cfg:  cfg,
		rng:  rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		ts:   1700000000,
		out:  &msgs,
		want: NewState(),
	}
	g.sets = g.attrSets()
	var peers, early []*genPeer
	for _, spec := range peerSpecs() {
		p := g.newPeer(spec)
		peers = append(peers, p)
		if !spec.late {
			early = append(early, p)
		}
	}

	g.initiation()
	for _, p := range early {
		g.peerUp(p)
	}
	var dumps [][]Message
	for _, p := range early {
		dumps = append(dumps, g.collect(func() { g.dump(p) }))
	}
	g.interleave(dumps)
	for _, p := range early {
		g.statisticsReport(p)
	}

	// Churn, while the late peer comes up and dumps its table.
	queues := [][]Message{}
	for _, p := range early {
		queues = append(queues, g.collect(func() { g.churn(p, false) }))
	}
	for _, p := range peers {
		if p.spec.late {
			queues = append(queues, g.collect(func() { g.peerUp(p); g.dump(p) }))
		}
	}
	g.interleave(queues)
	g.routeMirroring(peers[0])
	for _, p := range peers {
		if p.spec.vpnPE && cfg.EVPN {
			g.evpn(p)
		}
	}
	if cfg.Malformed {
		g.malformed(peers[0])
	}
	for _, p := range peers {
		if p.spec.goesDown {
			g.peerDown(p)
		}
	}

	// More churn on the peers still up: withdrawn routes come back.
	queues = nil
	for _, p := range peers {
		if p.state != nil {
			queues = append(queues, g.collect(func() { g.churn(p, true) }))
		}
	}
	g.interleave(queues)
	for _, p := range peers {
		if p.state != nil && g.rng.IntN(2) == 0 {
			g.statisticsReport(p)
		}
	}
	if cfg.Terminate {
		g.termination()
	}
	return msgs, g.want
}

// collect returns the messages f emits, instead of emitting them.
func (g *generator) collect(f func()) []Message {
	saved := g.out
	var q []Message
	g.out = &q
	f()
	g.out = saved
	return q
}

// interleave emits the queues' messages, each queue in its order, the
// queues mixed at random.
func (g *generator) interleave(queues [][]Message) {
	for {
		var open []int
		for i, q := range queues {
			if len(q) > 0 {
				open = append(open, i)
			}
		}
		if len(open) == 0 {
			return
		}
		i := open[g.rng.IntN(len(open))]
		n := min(len(queues[i]), 1+g.rng.IntN(4))
		*g.out = append(*g.out, queues[i][:n]...)
		queues[i] = queues[i][n:]
	}
}

func (g *generator) emit(typ MsgType, peer PeerKey, note string, body ...[]byte) {
	*g.out = append(*g.out, Message{Type: typ, Peer: peer, Note: note, Bytes: bmpMessage(typ, body...)})
}

// tick is the timestamp of the next message.
func (g *generator) tick() uint32 {
	g.ts += uint32(g.rng.IntN(2))
	return g.ts
}

func (g *generator) initiation() {
	tlvs := []TLV{
		{Type: 1, Value: "bmpcheck generated router"},
		{Type: 2, Value: "r1.bmpcheck"},
		{Type: 0, Value: fmt.Sprintf("seed %d", g.cfg.Seed)},
	}
	var body []byte
	for _, t := range tlvs {
		body = appendTLV(body, t)
	}
	g.emit(MsgInitiation, PeerKey{}, "initiation", body)
	g.want.Initiation = tlvs
}

func (g *generator) termination() {
	tlvs := []TLV{{Type: 0, Value: "shutting down"}, {Type: 1, Value: "\x00\x00"}}
	var body []byte
	for _, t := range tlvs {
		body = appendTLV(body, t)
	}
	g.emit(MsgTermination, PeerKey{}, "termination", body)
	g.want.Terminated, g.want.Termination = true, tlvs
}

// newPeer builds a peer's OPENs from its spec and sizes its tables.
func (g *generator) newPeer(spec peerSpec) *genPeer {
	p := &genPeer{spec: spec, canon: map[canonKey]Attrs{}}
	var routerCaps, peerCaps, routerAP, peerAP []byte
	for _, t := range spec.tables {
		mp := binary.BigEndian.AppendUint16(nil, t.family.AFI())
		mp = append(mp, 0, t.family.SAFI())
		routerCaps = appendCapability(routerCaps, capMultiprotocol, mp)
		peerCaps = appendCapability(peerCaps, capMultiprotocol, mp)
		tuple := binary.BigEndian.AppendUint16(nil, t.family.AFI())
		if t.routerMode != 0 {
			routerAP = append(routerAP, append(tuple, t.family.SAFI(), t.routerMode)...)
		}
		if t.peerMode != 0 {
			peerAP = append(peerAP, append(tuple, t.family.SAFI(), t.peerMode)...)
		}
		p.tables = append(p.tables, &genTable{
			spec: t, size: max(1, int(t.share*float64(g.cfg.Prefixes))),
			pos: map[RouteKey]int{}, used: map[RouteKey]bool{}, sets: map[RouteKey]int{},
		})
	}
	if spec.vpnPE && g.cfg.EVPN {
		routerCaps = appendCapability(routerCaps, capMultiprotocol, []byte{0, 25, 0, 70})
		peerCaps = appendCapability(peerCaps, capMultiprotocol, []byte{0, 25, 0, 70})
	}
	routerCaps = appendCapability(routerCaps, 2, nil) // route refresh
	peerCaps = appendCapability(peerCaps, 2, nil)
	routerCaps = appendCapability(routerCaps, capFourOctetAS, binary.BigEndian.AppendUint32(nil, routerAS))
	if !spec.legacy {
		peerCaps = appendCapability(peerCaps, capFourOctetAS, binary.BigEndian.AppendUint32(nil, spec.key.AS))
	}
	if spec.extended {
		routerCaps = appendCapability(routerCaps, capExtendedMessage, nil)
		peerCaps = appendCapability(peerCaps, capExtendedMessage, nil)
	}
	if routerAP != nil {
		routerCaps = appendCapability(routerCaps, capAddPath, routerAP)
	}
	if peerAP != nil {
		peerCaps = appendCapability(peerCaps, capAddPath, peerAP)
	}
	sent := openMessage(routerAS, routerID(), routerCaps)
	received := openMessage(spec.key.AS, spec.key.BGPID, peerCaps)
	if spec.key.Type == PeerLocRIB {
		received = sent // RFC 9069 5.3: a repeat of the fabricated OPEN
	}
	p.up = PeerUp{
		LocalAddress: spec.local, LocalPort: spec.localPort, RemotePort: spec.remotePort,
		SentOpen: string(sent), ReceivedOpen: string(received), Info: spec.info,
	}
	return p
}

func (p *genPeer) maxMsg() int {
	if p.spec.extended {
		return extMaxMsg
	}
	return bgpMaxSize
}

func (g *generator) peerUp(p *genPeer) {
	body := perPeerHeader(p.spec.key, g.tick())
	body = append(body, addrField(p.up.LocalAddress)...)
	body = binary.BigEndian.AppendUint16(body, p.up.LocalPort)
	body = binary.BigEndian.AppendUint16(body, p.up.RemotePort)
	body = append(body, p.up.SentOpen...)
	body = append(body, p.up.ReceivedOpen...)
	for _, t := range p.up.Info {
		body = appendTLV(body, t)
	}
	g.emit(MsgPeerUp, p.spec.key, "peer up "+p.spec.name, body)
	p.state = &Peer{Key: p.spec.key, Up: p.up, Tables: map[Family]*Table{}}
	g.want.Peers[p.spec.key] = p.state
	for _, t := range p.tables {
		t.routes = p.state.table(t.spec.family, t.spec.addPath).Routes
	}
}

func (g *generator) peerDown(p *genPeer) {
	body := perPeerHeader(p.spec.key, g.tick())
	body = append(body, 1) // local system closed with a NOTIFICATION
	body = append(body, bgpMessage(3, []byte{6, 2})...)
	g.emit(MsgPeerDown, p.spec.key, "peer down "+p.spec.name, body)
	delete(g.want.Peers, p.spec.key)
	p.state = nil
}

// dump announces each table's routes, then its End-of-RIB.
func (g *generator) dump(p *genPeer) {
	for _, t := range p.tables {
		g.announce(p, t, g.newEntries(p, t, t.size), "dump")
		g.endOfRIB(p, t)
	}
}

// churn withdraws and re-announces routes of each of the peer's tables,
// and announces new ones; again, it also announces withdrawn ones anew.
func (g *generator) churn(p *genPeer, again bool) {
	for _, t := range p.tables {
		n := max(1, int(t.spec.share*float64(g.cfg.Churn)))
		if again && len(t.gone) > 0 {
			k := min(n, len(t.gone))
			var back []entry
			for _, key := range t.gone[:k] {
				if _, ok := t.pos[key]; !ok {
					back = append(back, g.entry(t, key))
				}
			}
			t.gone = t.gone[k:]
			g.announce(p, t, back, "announce again")
		}
		g.withdraw(p, t, g.pick(t, n), "withdraw")
		var changed []entry
		for _, key := range g.pick(t, n) {
			e := g.entry(t, key)
			if e.set == t.sets[key] {
				e.set = (e.set + 1) % len(g.sets)
			}
			changed = append(changed, e)
		}
		g.announce(p, t, changed, "re-announce")
		g.announce(p, t, g.newEntries(p, t, max(1, n/4)), "announce new")
	}
}

// pick chooses up to n live routes at random.
func (g *generator) pick(t *genTable, n int) []RouteKey {
	n = min(n, len(t.live))
	var out []RouteKey
	for _, i := range g.rng.Perm(len(t.live))[:n] {
		out = append(out, t.live[i])
	}
	return out
}

// newEntries makes routes for about n new prefixes (with ADD-PATH, each
// has one to three paths).
func (g *generator) newEntries(p *genPeer, t *genTable, n int) []entry {
	var out []entry
	for range n {
		k := RouteKey{Prefix: g.prefix(t.spec.family)}
		if t.spec.family.vpn() {
			k.RD = vpnRDs()[g.rng.IntN(len(vpnRDs()))]
		}
		if t.used[k] {
			continue // a rare collision: one prefix fewer
		}
		t.used[k] = true
		paths := 1
		if t.spec.addPath {
			paths = []int{1, 1, 1, 1, 1, 1, 1, 2, 2, 3}[g.rng.IntN(10)]
			k.PathID = 1 + uint32(g.rng.IntN(8))
		}
		for i := range paths {
			pk := k
			pk.PathID += uint32(i)
			out = append(out, g.entry(t, pk))
		}
	}
	return out
}

// entry gives a route a random attribute set and, if labeled, label.
func (g *generator) entry(t *genTable, k RouteKey) entry {
	e := entry{key: k, set: g.pickSet()}
	if t.spec.family.labeled() {
		label := 16 + uint32(g.rng.IntN(1<<20-16))
		v := label<<4 | 1
		e.labels = Labels([]byte{byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return e
}

// pickSet skews towards the first sets, as real tables share a few sets
// among many routes.
func (g *generator) pickSet() int {
	u := g.rng.Float64()
	return min(len(g.sets)-1, int(float64(len(g.sets))*math.Pow(u, 3)))
}

func vpnRDs() []RD {
	return []RD{
		{0, 0, 0xfb, 0xf4, 0, 0, 0, 10},      // 64500:10
		{0, 0, 0xfb, 0xf4, 0, 0, 0, 20},      // 64500:20
		{0, 1, 198, 51, 100, 5, 0, 1},        // 198.51.100.5:1
		{0, 2, 0xfa, 0x56, 0xea, 0x05, 0, 7}, // 4200000005:7
	}
}

// prefix is a random prefix of the family's address space: IPv4 unicast
// space (never 192.0.2.0/24), IPv6 from 2000::/3.
func (g *generator) prefix(f Family) netip.Prefix {
	doc := netip.MustParsePrefix("192.0.2.0/24")
	for {
		if f.AFI() == 1 {
			bits := []int{16, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24, 24}[g.rng.IntN(12)]
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], g.rng.Uint32())
			a[0] = 1 + byte(g.rng.IntN(223))
			p := netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked()
			if !p.Overlaps(doc) {
				return p
			}
			continue
		}
		bits := []int{29, 32, 36, 40, 44, 48, 48, 48, 48, 64}[g.rng.IntN(10)]
		var a [16]byte
		binary.BigEndian.PutUint64(a[:], g.rng.Uint64())
		binary.BigEndian.PutUint64(a[8:], g.rng.Uint64())
		a[0] = 0x20 | a[0]&0x1f
		return netip.PrefixFrom(netip.AddrFrom16(a), bits).Masked()
	}
}

func (g *generator) attrSets() []attrSet {
	asn := func() uint32 {
		if g.rng.IntN(10) < 3 {
			return 131072 + uint32(g.rng.IntN(4199999999-131072))
		}
		for {
			if a := 1000 + uint32(g.rng.IntN(63000)); a != asTrans {
				return a
			}
		}
	}
	var sets []attrSet
	for i := range g.cfg.AttrSets {
		s := attrSet{
			origin:      []uint8{0, 0, 0, 0, 2, 1}[g.rng.IntN(6)],
			hasMED:      g.rng.IntN(2) == 0,
			med:         uint32(g.rng.IntN(1000)),
			localPref:   100 + 10*uint32(g.rng.IntN(10)),
			aggregator:  g.rng.IntN(10) == 0,
			nextHop:     g.rng.IntN(3),
			routeTarget: 1 + uint32(g.rng.IntN(4)),
		}
		for range 1 + g.rng.IntN(5) {
			s.path = append(s.path, asn())
		}
		if g.rng.IntN(20) == 0 {
			s.asSet = []uint32{asn(), asn()}
		}
		n := g.rng.IntN(7)
		if i%10 == 3 {
			n = 80 // past 255 bytes: an extended length
		}
		for range n {
			s.communities = append(s.communities, uint32(g.rng.IntN(65536))<<16|uint32(g.rng.IntN(65536)))
		}
		for range []int{0, 0, 1, 2, 3}[g.rng.IntN(5)] {
			s.large = append(s.large, [3]uint32{asn(), uint32(g.rng.IntN(1000)), uint32(g.rng.IntN(1000))})
		}
		sets = append(sets, s)
	}
	return sets
}

// attrs is the attribute list of set on p's table of f, in type order, and
// the next hop: for IPv4 unicast, in a NEXT_HOP of the list; else returned
// for MP_REACH_NLRI.
func (g *generator) attrs(p *genPeer, f Family, set int) ([]Attr, []byte) {
	s := g.sets[set]
	spec := p.spec
	as2 := spec.key.Flags&FlagA != 0 && spec.key.Type != PeerLocRIB
	path := s.path
	switch {
	case spec.key.Flags&FlagO != 0:
		path = append([]uint32{routerAS}, path...)
	case !spec.ibgp && spec.key.Type != PeerLocRIB:
		path = append([]uint32{spec.key.AS}, path...)
	}
	var list []Attr
	add := func(flags, typ uint8, v []byte) { list = append(list, Attr{Flags: flags, Type: typ, Value: string(v)}) }

	add(attrTransitive, attrOrigin, []byte{s.origin})
	asPath, needAS4 := encodeASPath(path, s.asSet, as2)
	add(attrTransitive, attrASPath, asPath)
	var nextHop []byte
	switch {
	case f == IPv4Unicast:
		add(attrTransitive, attrNextHop, spec.nextHops4[s.nextHop%len(spec.nextHops4)].AsSlice())
	case f.AFI() == 1:
		nextHop = spec.nextHops4[s.nextHop%len(spec.nextHops4)].AsSlice()
	case f == IPv6Labeled:
		nextHop = spec.nextHops6[s.nextHop%len(spec.nextHops6)][:16]
	default:
		nextHop = spec.nextHops6[s.nextHop%len(spec.nextHops6)]
	}
	if f.vpn() {
		nextHop = append(make([]byte, 8), nextHop[:min(len(nextHop), 16)]...)
	}
	if s.hasMED {
		add(attrOptional, attrMED, binary.BigEndian.AppendUint32(nil, s.med))
	}
	if spec.ibgp || spec.key.Type == PeerLocRIB {
		add(attrTransitive, attrLocalPref, binary.BigEndian.AppendUint32(nil, s.localPref))
	}
	var as4Aggregator []byte
	if s.aggregator {
		add(attrTransitive, attrAtomicAgg, nil)
		aggAS, id := path[len(path)-1], []byte{198, 51, 100, byte(set)}
		if as2 {
			agg := uint16(aggAS)
			if aggAS > 0xffff {
				agg = asTrans
				as4Aggregator = append(binary.BigEndian.AppendUint32(nil, aggAS), id...)
			}
			add(attrOptional|attrTransitive, attrAggregator, append(binary.BigEndian.AppendUint16(nil, agg), id...))
		} else {
			add(attrOptional|attrTransitive, attrAggregator, append(binary.BigEndian.AppendUint32(nil, aggAS), id...))
		}
	}
	if len(s.communities) > 0 {
		var v []byte
		for _, c := range s.communities {
			v = binary.BigEndian.AppendUint32(v, c)
		}
		add(attrOptional|attrTransitive, attrCommunities, v)
	}
	if f.vpn() {
		rt := []byte{0, 2}
		rt = binary.BigEndian.AppendUint16(rt, routerAS)
		rt = binary.BigEndian.AppendUint32(rt, s.routeTarget)
		add(attrOptional|attrTransitive, attrExtCommunity, rt)
	}
	if needAS4 {
		as4, _ := encodeASPath(path, s.asSet, false)
		add(attrOptional|attrTransitive, attrAS4Path, as4)
	}
	if as4Aggregator != nil {
		add(attrOptional|attrTransitive, 18, as4Aggregator)
	}
	if len(s.large) > 0 {
		var v []byte
		for _, l := range s.large {
			v = binary.BigEndian.AppendUint32(v, l[0])
			v = binary.BigEndian.AppendUint32(v, l[1])
			v = binary.BigEndian.AppendUint32(v, l[2])
		}
		add(attrOptional|attrTransitive, attrLargeComm, v)
	}
	return list, nextHop
}

// encodeASPath is an AS_SEQUENCE and, if set is not empty, an AS_SET. In
// 2-byte form an ASN past 65535 is AS_TRANS, and needAS4 says so (RFC 6793).
func encodeASPath(seq, set []uint32, as2 bool) (v []byte, needAS4 bool) {
	for _, seg := range []struct {
		typ  uint8
		asns []uint32
	}{{2, seq}, {1, set}} {
		if len(seg.asns) == 0 {
			continue
		}
		v = append(v, seg.typ, byte(len(seg.asns)))
		for _, a := range seg.asns {
			switch {
			case !as2:
				v = binary.BigEndian.AppendUint32(v, a)
			case a > 0xffff:
				v = binary.BigEndian.AppendUint16(v, asTrans)
				needAS4 = true
			default:
				v = binary.BigEndian.AppendUint16(v, uint16(a))
			}
		}
	}
	return v, needAS4
}

// canonical is the Attrs a State holds for set on p's table of f.
func (g *generator) canonical(p *genPeer, f Family, set int) Attrs {
	k := canonKey{f, set}
	if a, ok := p.canon[k]; ok {
		return a
	}
	list, nextHop := g.attrs(p, f, set)
	if nextHop != nil {
		list = append(list, Attr{Flags: attrOptional, Type: attrMPReach, Value: string(nextHop)})
	}
	a := MakeAttrs(list)
	p.canon[k] = a
	return a
}

// announce emits the entries, grouped by attribute set, as many NLRI per
// UPDATE as fit, and puts them in the expected table.
func (g *generator) announce(p *genPeer, t *genTable, entries []entry, note string) {
	f := t.spec.family
	var order []int
	groups := map[int][]entry{}
	for _, e := range entries {
		if groups[e.set] == nil {
			order = append(order, e.set)
		}
		groups[e.set] = append(groups[e.set], e)
		t.add(e.key, Route{Labels: e.labels, Attrs: g.canonical(p, f, e.set)}, e.set)
	}
	for _, set := range order {
		list, nextHop := g.attrs(p, f, set)
		var others []byte
		for _, a := range list {
			others = appendAttr(others, a)
		}
		budget := p.maxMsg() - bgpHeaderSize - 4 - len(others)
		if f != IPv4Unicast {
			budget -= 4 + 5 + len(nextHop)
		}
		var nlri []byte
		flush := func() {
			if len(nlri) == 0 {
				return
			}
			var update []byte
			if f == IPv4Unicast {
				update = updateBody(nil, others, nlri)
			} else {
				reach := binary.BigEndian.AppendUint16(nil, f.AFI())
				reach = append(reach, f.SAFI(), byte(len(nextHop)))
				reach = append(reach, nextHop...)
				reach = append(reach, 0)
				reach = append(reach, nlri...)
				// RFC 7606 5.1: MP_REACH_NLRI first. Always a 2-byte length,
				// as most speakers send it.
				attrs := []byte{attrOptional | attrExtLen, attrMPReach, byte(len(reach) >> 8), byte(len(reach))}
				attrs = append(attrs, reach...)
				update = updateBody(nil, append(attrs, others...), nil)
			}
			g.routeMonitoring(p, update, fmt.Sprintf("%s %s %s", note, p.spec.name, f))
			nlri = nil
		}
		for _, e := range groups[set] {
			one := appendNLRI(nil, f, e.key, e.labels, t.spec.addPath, false)
			if len(nlri)+len(one) > budget {
				flush()
			}
			nlri = append(nlri, one...)
		}
		flush()
	}
}

// withdraw emits the withdrawal of keys and removes them from the
// expected table.
func (g *generator) withdraw(p *genPeer, t *genTable, keys []RouteKey, note string) {
	f := t.spec.family
	budget := p.maxMsg() - bgpHeaderSize - 4
	if f != IPv4Unicast {
		budget -= 4 + 3
	}
	var nlri []byte
	flush := func() {
		if len(nlri) == 0 {
			return
		}
		var update []byte
		if f == IPv4Unicast {
			update = updateBody(nlri, nil, nil)
		} else {
			v := binary.BigEndian.AppendUint16(nil, f.AFI())
			v = append(v, f.SAFI())
			v = append(v, nlri...)
			attr := append([]byte{attrOptional | attrExtLen, attrMPUnreach}, byte(len(v)>>8), byte(len(v)))
			update = updateBody(nil, append(attr, v...), nil)
		}
		g.routeMonitoring(p, update, fmt.Sprintf("%s %s %s", note, p.spec.name, f))
		nlri = nil
	}
	for _, k := range keys {
		t.remove(k)
		one := appendNLRI(nil, f, k, "", t.spec.addPath, true)
		if len(nlri)+len(one) > budget {
			flush()
		}
		nlri = append(nlri, one...)
	}
	flush()
}

func (g *generator) endOfRIB(p *genPeer, t *genTable) {
	f := t.spec.family
	update := updateBody(nil, nil, nil)
	if f != IPv4Unicast {
		update = updateBody(nil, []byte{attrOptional, attrMPUnreach, 3, byte(f.AFI() >> 8), byte(f.AFI()), f.SAFI()}, nil)
	}
	g.routeMonitoring(p, update, fmt.Sprintf("end-of-rib %s %s", p.spec.name, f))
	p.state.table(f, t.spec.addPath).EndOfRIB = true
}

// updateBody is a whole UPDATE message.
func updateBody(withdrawn, attrs, nlri []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(withdrawn)))
	b = append(b, withdrawn...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(attrs)))
	b = append(b, attrs...)
	return bgpMessage(bgpUpdate, append(b, nlri...))
}

func (g *generator) routeMonitoring(p *genPeer, update []byte, note string) {
	g.emit(MsgRouteMonitoring, p.spec.key, note, perPeerHeader(p.spec.key, g.tick()), update)
}

// statisticsReport sends the counters that fit the peer's RIB (RFC 7854
// 4.8, RFC 9069 5.5, RFC 8671 5).
func (g *generator) statisticsReport(p *genPeer) {
	total, perFamily := uint16(7), uint16(9) // Adj-RIB-In
	switch {
	case p.spec.key.Type == PeerLocRIB:
		total, perFamily = 8, 10
	case p.spec.key.Flags&FlagO != 0:
		total, perFamily = 14, 16
	}
	var stats []byte
	count := uint32(0)
	stat := func(typ uint16, v []byte) {
		stats = binary.BigEndian.AppendUint16(stats, typ)
		stats = binary.BigEndian.AppendUint16(stats, uint16(len(v)))
		stats = append(stats, v...)
		count++
	}
	if p.spec.key.Type != PeerLocRIB {
		stat(0, binary.BigEndian.AppendUint32(nil, uint32(g.rng.IntN(100))))
	}
	stat(total, binary.BigEndian.AppendUint64(nil, uint64(p.state.RouteCount())))
	for _, t := range p.tables {
		v := binary.BigEndian.AppendUint16(nil, t.spec.family.AFI())
		v = append(v, t.spec.family.SAFI())
		stat(perFamily, binary.BigEndian.AppendUint64(v, uint64(len(t.live))))
	}
	g.emit(MsgStatisticsReport, p.spec.key, "statistics "+p.spec.name,
		perPeerHeader(p.spec.key, g.tick()), binary.BigEndian.AppendUint32(nil, count), stats)
}

// routeMirroring mirrors an UPDATE and says that messages were lost (RFC
// 7854 4.7).
func (g *generator) routeMirroring(p *genPeer) {
	update := updateBody(nil, nil, nil)
	body := perPeerHeader(p.spec.key, g.tick())
	body = binary.BigEndian.AppendUint16(body, 0)
	body = binary.BigEndian.AppendUint16(body, uint16(len(update)))
	body = append(body, update...)
	body = append(body, 0, 1, 0, 2, 0, 1)
	g.emit(MsgRouteMirroring, p.spec.key, "route mirroring "+p.spec.name, body)
}

// evpn announces EVPN MAC/IP routes (RFC 7432 7.2) and withdraws one.
func (g *generator) evpn(p *genPeer) {
	var nlri []byte
	var first []byte
	for i := range 5 {
		route := []byte{2, 33}
		route = append(route, vpnRDs()[0][:]...)
		route = append(route, make([]byte, 10+4)...) // ESI, Ethernet Tag
		route = append(route, 48, 0x02, 0, 0, 0, 0, byte(i), 0)
		route = append(route, 0x01, 0x00, 0x11) // MPLS label
		if first == nil {
			first = route
		}
		nlri = append(nlri, route...)
	}
	reach := append([]byte{0, 25, 70, 4}, p.spec.nextHops4[0].AsSlice()...)
	reach = append(append(reach, 0), nlri...)
	attrs := appendAttr(nil, Attr{Flags: attrOptional, Type: attrMPReach, Value: string(reach)})
	attrs = appendAttr(attrs, Attr{Flags: attrTransitive, Type: attrOrigin, Value: "\x00"})
	attrs = appendAttr(attrs, Attr{Flags: attrTransitive, Type: attrASPath})
	attrs = appendAttr(attrs, Attr{Flags: attrTransitive, Type: attrLocalPref, Value: "\x00\x00\x00\x64"})
	g.routeMonitoring(p, updateBody(nil, attrs, nil), "evpn (unkeyed) "+p.spec.name)
	unreach := appendAttr(nil, Attr{Flags: attrOptional, Type: attrMPUnreach, Value: string(append([]byte{0, 25, 70}, first...))})
	g.routeMonitoring(p, updateBody(nil, unreach, nil), "evpn withdraw (unkeyed) "+p.spec.name)
	g.want.Unkeyed[TableRef{Peer: p.spec.key, Family: EVPN}] = true
}

// malformed sends a Route Monitoring whose AS_PATH says 200 bytes where 8
// are left in the path attributes; the BMP and BGP lengths are right.
func (g *generator) malformed(p *genPeer) {
	attrs := []byte{attrTransitive, attrOrigin, 1, 0, attrTransitive, attrASPath, 200, 2, 1, 0, 0, 0xfb, 0xf5, 0, 0}
	g.routeMonitoring(p, updateBody(nil, attrs, []byte{24, 203, 0, 113}), "malformed "+p.spec.name)
}
