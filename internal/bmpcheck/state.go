package bmpcheck

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

// MsgType is a BMP message type (RFC 7854 4.1).
type MsgType uint8

// The BMP message types.
const (
	MsgRouteMonitoring  MsgType = 0
	MsgStatisticsReport MsgType = 1
	MsgPeerDown         MsgType = 2
	MsgPeerUp           MsgType = 3
	MsgInitiation       MsgType = 4
	MsgTermination      MsgType = 5
	MsgRouteMirroring   MsgType = 6
)

func (t MsgType) String() string {
	switch t {
	case MsgRouteMonitoring:
		return "Route Monitoring"
	case MsgStatisticsReport:
		return "Statistics Report"
	case MsgPeerDown:
		return "Peer Down"
	case MsgPeerUp:
		return "Peer Up"
	case MsgInitiation:
		return "Initiation"
	case MsgTermination:
		return "Termination"
	case MsgRouteMirroring:
		return "Route Mirroring"
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// Peer types (RFC 7854 4.2, RFC 9069 4.1).
const (
	PeerGlobal     uint8 = 0
	PeerRD         uint8 = 1
	PeerLocal      uint8 = 2
	PeerLocRIB     uint8 = 3
	peerHeaderSize       = 42
)

// Per-peer header flags (RFC 7854 4.2, RFC 8671 4). For a Loc-RIB peer the
// top bit is F, filtered (RFC 9069 4.2), and the others are unused.
const (
	FlagV        uint8 = 0x80 // the peer address is IPv6
	FlagL        uint8 = 0x40 // post-policy
	FlagA        uint8 = 0x20 // AS_PATH in 2-byte (legacy) form
	FlagO        uint8 = 0x10 // Adj-RIB-Out
	FlagFiltered uint8 = 0x80 // Loc-RIB: filtered
)

// Family is an AFI/SAFI pair: AFI<<8 | SAFI.
type Family uint32

// The families a State keys. Any other is unkeyed.
const (
	IPv4Unicast   Family = 1<<8 | 1
	IPv4Multicast Family = 1<<8 | 2
	IPv4Labeled   Family = 1<<8 | 4
	VPNv4         Family = 1<<8 | 128
	IPv6Unicast   Family = 2<<8 | 1
	IPv6Multicast Family = 2<<8 | 2
	IPv6Labeled   Family = 2<<8 | 4
	VPNv6         Family = 2<<8 | 128
	EVPN          Family = 25<<8 | 70
)

// FamilyOf makes a Family.
func FamilyOf(afi uint16, safi uint8) Family { return Family(afi)<<8 | Family(safi) }

// AFI is the family's Address Family Identifier.
func (f Family) AFI() uint16 { return uint16(f >> 8) }

// SAFI is the family's Subsequent Address Family Identifier.
func (f Family) SAFI() uint8 { return uint8(f) }

// Keyed reports whether a State keys routes of f.
func (f Family) Keyed() bool {
	if f.AFI() != 1 && f.AFI() != 2 {
		return false
	}
	switch f.SAFI() {
	case 1, 2, 4, 128:
		return true
	}
	return false
}

func (f Family) labeled() bool { return f.SAFI() == 4 || f.SAFI() == 128 }
func (f Family) vpn() bool     { return f.SAFI() == 128 }

// addrBits is the length of the family's addresses: 32 or 128.
func (f Family) addrBits() int {
	if f.AFI() == 1 {
		return 32
	}
	return 128
}

func (f Family) String() string {
	switch f {
	case IPv4Unicast:
		return "ipv4-unicast"
	case IPv4Multicast:
		return "ipv4-multicast"
	case IPv4Labeled:
		return "ipv4-labeled"
	case VPNv4:
		return "vpnv4"
	case IPv6Unicast:
		return "ipv6-unicast"
	case IPv6Multicast:
		return "ipv6-multicast"
	case IPv6Labeled:
		return "ipv6-labeled"
	case VPNv6:
		return "vpnv6"
	case EVPN:
		return "evpn"
	}
	return fmt.Sprintf("afi %d safi %d", f.AFI(), f.SAFI())
}

// RD is a Route Distinguisher, or a per-peer header's Peer Distinguisher, as
// its 8 bytes (RFC 4364 4.2).
type RD [8]byte

func (d RD) String() string {
	admin := d[2:]
	switch binary.BigEndian.Uint16(d[:2]) {
	case 0:
		return fmt.Sprintf("%d:%d", binary.BigEndian.Uint16(admin), binary.BigEndian.Uint32(admin[2:]))
	case 1:
		return fmt.Sprintf("%s:%d", netip.AddrFrom4([4]byte(admin[:4])), binary.BigEndian.Uint16(admin[4:]))
	case 2:
		return fmt.Sprintf("%d:%d", binary.BigEndian.Uint32(admin), binary.BigEndian.Uint16(admin[4:]))
	}
	return "rd-" + hex.EncodeToString(d[:])
}

// PeerKey identifies a peer's RIB: its per-peer header without the timestamp.
//
// Address is what the header carries, without loss: a 4-byte address when
// the V flag is clear and the 12 leading bytes are zero (as RFC 7854 says an
// IPv4 address is sent), else the 16 bytes as they are.
type PeerKey struct {
	Type          uint8
	Flags         uint8
	Distinguisher RD
	Address       netip.Addr
	AS            uint32
	BGPID         netip.Addr // always 4 bytes
}

func (k PeerKey) String() string {
	var b strings.Builder
	switch k.Type {
	case PeerGlobal:
		b.WriteString("global")
	case PeerRD:
		b.WriteString("rd-instance")
	case PeerLocal:
		b.WriteString("local-instance")
	case PeerLocRIB:
		b.WriteString("loc-rib")
	default:
		fmt.Fprintf(&b, "peer-type-%d", k.Type)
	}
	if k.Distinguisher != (RD{}) {
		fmt.Fprintf(&b, " %s", k.Distinguisher)
	}
	fmt.Fprintf(&b, " %s AS%d id %s", k.Address, k.AS, k.BGPID)
	var flags []string
	if k.Type == PeerLocRIB {
		if k.Flags&FlagFiltered != 0 {
			flags = append(flags, "filtered")
		}
	} else {
		if k.Flags&FlagL != 0 {
			flags = append(flags, "post-policy")
		}
		if k.Flags&FlagO != 0 {
			flags = append(flags, "adj-rib-out")
		}
		if k.Flags&FlagA != 0 {
			flags = append(flags, "2-byte-as")
		}
	}
	if len(flags) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(flags, ", "))
	}
	if k.Flags&^(FlagV|FlagL|FlagA|FlagO) != 0 {
		fmt.Fprintf(&b, " flags %#02x", k.Flags)
	}
	return b.String()
}

// TLV is an information TLV of an Initiation, Termination or Peer Up.
type TLV struct {
	Type  uint16
	Value string
}

// PeerUp is what a Peer Up carries after its per-peer header. The OPENs are
// whole BGP messages, header included, as sent.
type PeerUp struct {
	LocalAddress netip.Addr // mapped as PeerKey.Address is
	LocalPort    uint16
	RemotePort   uint16
	SentOpen     string // the router's OPEN to the peer
	ReceivedOpen string // the peer's OPEN to the router
	Info         []TLV
}

func (u PeerUp) equal(o PeerUp) bool {
	return u.LocalAddress == o.LocalAddress && u.LocalPort == o.LocalPort && u.RemotePort == o.RemotePort &&
		u.SentOpen == o.SentOpen && u.ReceivedOpen == o.ReceivedOpen && tlvsEqual(u.Info, o.Info)
}

func tlvsEqual(a, b []TLV) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// RouteKey identifies a route in its table.
type RouteKey struct {
	RD     RD // VPN only
	Prefix netip.Prefix
	PathID uint32 // 0 unless the table uses ADD-PATH
}

func (k RouteKey) String() string {
	s := k.Prefix.String()
	if k.RD != (RD{}) {
		s = k.RD.String() + " " + s
	}
	if k.PathID != 0 {
		s += fmt.Sprintf(" path %d", k.PathID)
	}
	return s
}

// Route is a route's value.
type Route struct {
	Labels Labels // labeled unicast and VPN only
	Attrs  Attrs
}

// Labels is an MPLS label stack: 3-byte entries, 20-bit label, 3-bit traffic
// class, bottom-of-stack bit (RFC 8277 2).
type Labels string

func (l Labels) String() string {
	if l == "" {
		return "no label"
	}
	var out []string
	for i := 0; i+3 <= len(l); i += 3 {
		v := uint32(l[i])<<16 | uint32(l[i+1])<<8 | uint32(l[i+2])
		out = append(out, fmt.Sprintf("%d", v>>4))
	}
	return "label " + strings.Join(out, ",")
}

// Attrs is a route's path attributes in canonical form (see the package doc):
// entries of flags, type, 2-byte length and value, in type order.
type Attrs string

// Attr is one path attribute. Flags never carry the Extended Length bit.
type Attr struct {
	Flags uint8
	Type  uint8
	Value string
}

// Path attribute flags and type codes.
const (
	attrOptional   uint8 = 0x80
	attrTransitive uint8 = 0x40
	attrExtLen     uint8 = 0x10

	attrOrigin       uint8 = 1
	attrASPath       uint8 = 2
	attrNextHop      uint8 = 3
	attrMED          uint8 = 4
	attrLocalPref    uint8 = 5
	attrAtomicAgg    uint8 = 6
	attrAggregator   uint8 = 7
	attrCommunities  uint8 = 8
	attrMPReach      uint8 = 14
	attrMPUnreach    uint8 = 15
	attrExtCommunity uint8 = 16
	attrAS4Path      uint8 = 17
	attrLargeComm    uint8 = 32
)

// MakeAttrs puts attributes in canonical form: type order (stable), without
// the Extended Length flag. The caller has already applied the rules of the
// package doc (which attributes a route keeps).
func MakeAttrs(list []Attr) Attrs {
	sorted := make([]Attr, len(list))
	copy(sorted, list)
	// Insertion sort: stable, and lists are short.
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && sorted[j].Type < sorted[j-1].Type; j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	var b []byte
	for _, a := range sorted {
		b = append(b, a.Flags&^attrExtLen, a.Type, byte(len(a.Value)>>8), byte(len(a.Value)))
		b = append(b, a.Value...)
	}
	return Attrs(b)
}

// List decodes the attributes. Attrs made by MakeAttrs or Parse always decode.
func (a Attrs) List() []Attr {
	var out []Attr
	for s := string(a); len(s) >= 4; {
		n := int(s[2])<<8 | int(s[3])
		if 4+n > len(s) {
			break
		}
		out = append(out, Attr{Flags: s[0], Type: s[1], Value: s[4 : 4+n]})
		s = s[4+n:]
	}
	return out
}

func (a Attrs) String() string { return a.format(false) }

// format writes the attributes for a person; as2 says AS_PATH has 2-byte ASNs.
func (a Attrs) format(as2 bool) string {
	var out []string
	for _, at := range a.List() {
		out = append(out, at.format(as2))
	}
	return strings.Join(out, " ")
}

func (a Attr) format(as2 bool) string {
	v := a.Value
	u32 := func() string { return fmt.Sprint(binary.BigEndian.Uint32([]byte(v))) }
	switch {
	case a.Type == attrOrigin && len(v) == 1:
		return "origin=" + [...]string{"igp", "egp", "incomplete", "?"}[min(v[0], 3)]
	case a.Type == attrASPath:
		return "as-path=" + formatASPath(v, as2)
	case a.Type == attrAS4Path:
		return "as4-path=" + formatASPath(v, false)
	case a.Type == attrNextHop && len(v) == 4:
		return "next-hop=" + netip.AddrFrom4([4]byte([]byte(v))).String()
	case a.Type == attrMPReach:
		return "mp-next-hop=" + formatNextHop(v)
	case a.Type == attrMED && len(v) == 4:
		return "med=" + u32()
	case a.Type == attrLocalPref && len(v) == 4:
		return "local-pref=" + u32()
	case a.Type == attrCommunities && len(v)%4 == 0:
		var cs []string
		for i := 0; i < len(v); i += 4 {
			cs = append(cs, fmt.Sprintf("%d:%d", binary.BigEndian.Uint16([]byte(v[i:])), binary.BigEndian.Uint16([]byte(v[i+2:]))))
		}
		return "communities=" + strings.Join(cs, ",")
	case a.Type == attrLargeComm && len(v)%12 == 0:
		var cs []string
		for i := 0; i < len(v); i += 12 {
			b := []byte(v[i:])
			cs = append(cs, fmt.Sprintf("%d:%d:%d", binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:]), binary.BigEndian.Uint32(b[8:])))
		}
		return "large-communities=" + strings.Join(cs, ",")
	}
	return fmt.Sprintf("attr%d[%#02x]=%s", a.Type, a.Flags, hex.EncodeToString([]byte(v)))
}

func formatASPath(v string, as2 bool) string {
	size := 4
	if as2 {
		size = 2
	}
	var segs []string
	for len(v) >= 2 {
		typ, n := v[0], int(v[1])
		if 2+n*size > len(v) {
			return "malformed:" + hex.EncodeToString([]byte(v))
		}
		var asns []string
		for i := range n {
			b := []byte(v[2+i*size:])
			if as2 {
				asns = append(asns, fmt.Sprint(binary.BigEndian.Uint16(b)))
			} else {
				asns = append(asns, fmt.Sprint(binary.BigEndian.Uint32(b)))
			}
		}
		s := strings.Join(asns, ",")
		if typ == 1 { // AS_SET
			s = "{" + s + "}"
		}
		segs = append(segs, s)
		v = v[2+n*size:]
	}
	return "[" + strings.Join(segs, " ") + "]"
}

func formatNextHop(v string) string {
	b := []byte(v)
	switch len(b) {
	case 4, 16:
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case 12, 24: // VPN: an RD (zero) before the address
		a, _ := netip.AddrFromSlice(b[8:])
		return a.String()
	case 32:
		return netip.AddrFrom16([16]byte(b)).String() + "," + netip.AddrFrom16([16]byte(b[16:])).String()
	}
	return hex.EncodeToString(b)
}

// Table is one AFI/SAFI of a peer.
type Table struct {
	AddPath  bool // routes carry ADD-PATH path identifiers
	EndOfRIB bool // an End-of-RIB was seen; not compared by Equal
	Routes   map[RouteKey]Route
}

// routeOf is the route of k in t, which may be nil.
func (t *Table) routeOf(k RouteKey) (Route, bool) {
	if t == nil {
		return Route{}, false
	}
	r, ok := t.Routes[k]
	return r, ok
}

// Peer is a peer that is up.
type Peer struct {
	Key    PeerKey
	Up     PeerUp
	Tables map[Family]*Table

	sess session // decoded from Up by the parser
}

// table returns the peer's table of f, made if missing.
func (p *Peer) table(f Family, addPath bool) *Table {
	t := p.Tables[f]
	if t == nil {
		t = &Table{AddPath: addPath, Routes: map[RouteKey]Route{}}
		p.Tables[f] = t
	}
	return t
}

// RouteCount is the number of routes of the peer.
func (p *Peer) RouteCount() int {
	n := 0
	for _, t := range p.Tables {
		n += len(t.Routes)
	}
	return n
}

// TableRef names a table of a peer.
type TableRef struct {
	Peer   PeerKey
	Family Family
}

func (r TableRef) String() string { return r.Peer.String() + " " + r.Family.String() }

// State is a collector's view of one BMP stream; see the package doc.
type State struct {
	Initiation  []TLV // nil before an Initiation
	Terminated  bool
	Termination []TLV
	Peers       map[PeerKey]*Peer
	// Unkeyed lists each peer and AFI/SAFI whose routes were announced or
	// withdrawn but are not kept. It outlives a Peer Down: the state is
	// incomplete for the whole stream.
	Unkeyed map[TableRef]bool

	// Messages counts the messages read, by type; Equal ignores it.
	Messages map[MsgType]int

	retained int // bytes of attributes, labels, OPENs and TLVs held, for the fuzz test's bound
}

// NewState returns an empty state.
func NewState() *State {
	return &State{Peers: map[PeerKey]*Peer{}, Unkeyed: map[TableRef]bool{}, Messages: map[MsgType]int{}}
}

// PeerCount is the number of peers that are up.
func (s *State) PeerCount() int { return len(s.Peers) }

// RouteCount is the number of routes of every peer.
func (s *State) RouteCount() int {
	n := 0
	for _, p := range s.Peers {
		n += p.RouteCount()
	}
	return n
}

// Summary is one line per peer and table with its route count, sorted.
func (s *State) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d peers, %d routes", s.PeerCount(), s.RouteCount())
	if s.Terminated {
		b.WriteString(", terminated")
	}
	b.WriteString("\n")
	for _, p := range sortedPeers(s.Peers) {
		fmt.Fprintf(&b, "  %s\n", p.Key)
		for _, f := range sortedFamilies(p.Tables) {
			t := p.Tables[f]
			fmt.Fprintf(&b, "    %s: %d routes", f, len(t.Routes))
			if t.AddPath {
				b.WriteString(", add-path")
			}
			if t.EndOfRIB {
				b.WriteString(", end-of-rib")
			}
			b.WriteString("\n")
		}
	}
	for _, r := range sortedRefs(s.Unkeyed) {
		fmt.Fprintf(&b, "  unkeyed: %s\n", r)
	}
	return b.String()
}
