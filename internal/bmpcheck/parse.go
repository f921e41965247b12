package bmpcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// commonHeaderSize is the BMP common header: version, length, type.
const commonHeaderSize = 6

// Parse reads a BMP stream from its first byte into the state a collector
// would hold, strictly (see the package doc). On error it returns a
// *ParseError and the state of the messages before the one at fault.
func Parse(stream []byte) (*State, error) { return parse(stream, true) }

// ParseAll is Parse for a stream whose sender the test does not control: it
// accepts what BGP accepts and a single generated session never holds (see
// the package doc). A collector's recording of a replay followed by live
// messages is one stream to it like any other.
func ParseAll(stream []byte) (*State, error) { return parse(stream, false) }

// Whole is stream up to the end of its last whole message, by the common
// headers' lengths: what a test that polls a collector's recording, while
// bytes are still arriving, can parse.
func Whole(stream []byte) []byte {
	n := 0
	for len(stream)-n >= commonHeaderSize {
		length := int(binary.BigEndian.Uint32(stream[n+1:]))
		if length < commonHeaderSize || length > len(stream)-n {
			break
		}
		n += length
	}
	return stream[:n]
}

type parser struct {
	strict   bool
	s        *State
	interned map[string]string
}

func parse(stream []byte, strict bool) (*State, error) {
	p := &parser{strict: strict, s: NewState(), interned: map[string]string{}}
	c := &cursor{b: stream}
	for i := 0; !c.empty(); i++ {
		start := c.offset()
		typ, err := p.message(c, i)
		if err != nil {
			pe := &ParseError{Offset: start, Message: i, MessageOffset: start, Type: typ,
				NoHeader: len(stream)-start < commonHeaderSize, Reason: err.Error()}
			if f, ok := errors.AsType[*fault](err); ok {
				pe.Offset, pe.Reason = f.offset, f.reason
			}
			return p.s, pe
		}
	}
	return p.s, nil
}

// intern returns the string equal to s that the state already holds, or s.
func (p *parser) intern(s string) string {
	if held, ok := p.interned[s]; ok {
		return held
	}
	p.interned[s] = s
	p.s.retained += len(s)
	return s
}

// message reads one BMP message and applies it. A message that fails to
// decode leaves the state as it was.
func (p *parser) message(c *cursor, index int) (MsgType, error) {
	start := c.offset()
	if err := c.need(commonHeaderSize, "common header"); err != nil {
		return 0, err
	}
	version, _ := c.u8("")
	length, _ := c.u32("")
	t, _ := c.u8("")
	typ := MsgType(t)
	if version != 3 {
		return typ, &fault{offset: start, reason: fmt.Sprintf("version %d, not 3", version)}
	}
	if length < commonHeaderSize {
		return typ, &fault{offset: start + 1, reason: fmt.Sprintf("message length %d is shorter than the common header", length)}
	}
	body, err := c.sub(int(length)-commonHeaderSize, fmt.Sprintf("%s of length %d", typ, length))
	if err != nil {
		return typ, err
	}
	switch {
	case p.s.Terminated:
		return typ, &fault{offset: start, reason: "a message after the Termination"}
	case p.strict && index == 0 && typ != MsgInitiation:
		return typ, &fault{offset: start, reason: "the first message is not an Initiation"}
	}
	switch typ {
	case MsgInitiation:
		err = p.initiation(body)
	case MsgTermination:
		err = p.termination(body)
	case MsgPeerUp:
		err = p.peerUp(body)
	case MsgPeerDown:
		err = p.peerDown(body)
	case MsgRouteMonitoring:
		err = p.routeMonitoring(body)
	case MsgStatisticsReport:
		err = p.statisticsReport(body)
	case MsgRouteMirroring:
		err = p.routeMirroring(body)
	}
	if err != nil {
		return typ, err
	}
	p.s.Messages[typ]++
	return typ, nil
}

func (p *parser) initiation(c *cursor) error {
	if p.strict && p.s.Initiation != nil {
		return c.errorf("a second Initiation")
	}
	tlvs, err := p.tlvs(c, "information TLV")
	if err != nil {
		return err
	}
	p.s.Initiation = tlvs
	return nil
}

func (p *parser) termination(c *cursor) error {
	tlvs, err := p.tlvs(c, "termination TLV")
	if err != nil {
		return err
	}
	p.s.Terminated, p.s.Termination = true, tlvs
	return nil
}

// tlvs reads type, length, value to the end of c (RFC 7854 4.4). The result
// is never nil.
func (p *parser) tlvs(c *cursor, what string) ([]TLV, error) {
	out := []TLV{}
	for !c.empty() {
		typ, _ := c.u16(what + " type")
		n, err := c.u16(what + " length")
		if err != nil {
			return nil, err
		}
		v, err := c.bytes(int(n), fmt.Sprintf("%s %d", what, typ))
		if err != nil {
			return nil, err
		}
		out = append(out, TLV{Type: typ, Value: string(v)})
		p.s.retained += len(v)
	}
	return out, nil
}

// peerHeader reads a per-peer header (RFC 7854 4.2).
func peerHeader(c *cursor) (PeerKey, error) {
	h, err := c.bytes(peerHeaderSize, "per-peer header")
	if err != nil {
		return PeerKey{}, err
	}
	k := PeerKey{
		Type:          h[0],
		Flags:         h[1],
		Distinguisher: RD(h[2:10]),
		AS:            uint32(h[26])<<24 | uint32(h[27])<<16 | uint32(h[28])<<8 | uint32(h[29]),
		BGPID:         netip.AddrFrom4([4]byte(h[30:34])),
	}
	k.Address = headerAddr([16]byte(h[10:26]), k.ipv6())
	return k, nil
}

// ipv6 reports whether the peer's addresses are IPv6 (the V flag, which a
// Loc-RIB peer does not have).
func (k PeerKey) ipv6() bool { return k.Type != PeerLocRIB && k.Flags&FlagV != 0 }

// headerAddr maps a 16-byte address field to an Addr without loss: 4 bytes
// if it is IPv4 as RFC 7854 sends it (12 zero bytes first), else 16.
func headerAddr(raw [16]byte, v6 bool) netip.Addr {
	if !v6 && [12]byte(raw[:12]) == [12]byte{} {
		return netip.AddrFrom4([4]byte(raw[12:]))
	}
	return netip.AddrFrom16(raw)
}

func (p *parser) peerUp(c *cursor) error {
	key, err := peerHeader(c)
	if err != nil {
		return err
	}
	if p.strict && p.s.Peers[key] != nil {
		return c.errorf("a Peer Up for %s, which is up", key)
	}
	local, err := c.bytes(16, "local address")
	if err != nil {
		return err
	}
	up := PeerUp{LocalAddress: headerAddr([16]byte(local), key.ipv6())}
	if up.LocalPort, err = c.u16("local port"); err != nil {
		return err
	}
	if up.RemotePort, err = c.u16("remote port"); err != nil {
		return err
	}
	var opens [2]openInfo
	for i, what := range []string{"sent OPEN", "received OPEN"} {
		typ, whole, body, err := readBGP(c, what)
		if err != nil {
			return err
		}
		if typ != bgpOpen {
			return body.errorf("%s is a BGP message of type %d", what, typ)
		}
		if opens[i], err = decodeOpen(body); err != nil {
			return err
		}
		if i == 0 {
			up.SentOpen = string(whole)
		} else {
			up.ReceivedOpen = string(whole)
		}
		p.s.retained += len(whole)
	}
	if up.Info, err = p.tlvs(c, "information TLV"); err != nil {
		return err
	}
	p.s.Peers[key] = &Peer{Key: key, Up: up, Tables: map[Family]*Table{}, sess: newSession(key, opens[0], opens[1])}
	return nil
}

func (p *parser) peerDown(c *cursor) error {
	key, err := peerHeader(c)
	if err != nil {
		return err
	}
	if _, err := c.u8("reason"); err != nil {
		return err
	}
	if p.s.Peers[key] == nil {
		if p.strict {
			return c.errorf("a Peer Down for %s, which is not up", key)
		}
		return nil
	}
	delete(p.s.Peers, key)
	return nil
}

func (p *parser) routeMonitoring(c *cursor) error {
	key, err := peerHeader(c)
	if err != nil {
		return err
	}
	peer := p.s.Peers[key]
	if peer == nil {
		return c.errorf("a Route Monitoring for %s, which is not up", key)
	}
	typ, whole, body, err := readBGP(c, "UPDATE")
	if err != nil {
		return err
	}
	if typ != bgpUpdate {
		return body.errorf("a BGP message of type %d, not an UPDATE", typ)
	}
	if !c.empty() {
		return c.errorf("%d bytes after the UPDATE", c.left())
	}
	if p.strict && len(whole) > peer.sess.maxUpdate {
		return body.errorf("an UPDATE of %d bytes on a session without extended messages", len(whole))
	}
	u, err := decodeUpdate(body, peer.sess, p.intern)
	if err != nil {
		return err
	}
	return p.apply(peer, u)
}

// apply makes an UPDATE's changes, after checking them so that a refused
// UPDATE changes nothing.
func (p *parser) apply(peer *Peer, u *update) error {
	if p.strict {
		type route struct {
			family Family
			key    RouteKey
		}
		gone := map[route]bool{}
		for _, w := range u.withdraw {
			t := peer.Tables[w.family]
			_, present := t.routeOf(w.key)
			if !present || gone[route{w.family, w.key}] {
				return &fault{offset: w.offset, reason: fmt.Sprintf("withdraws %s %s, which is not in the table", w.family, w.key)}
			}
			gone[route{w.family, w.key}] = true
		}
	}
	for _, w := range u.withdraw {
		if t := peer.Tables[w.family]; t != nil {
			delete(t.Routes, w.key)
		}
	}
	for _, a := range u.announce {
		peer.table(a.family, peer.sess.addPath[a.family]).Routes[a.key] = a.route
	}
	for _, f := range u.endOfRIB {
		peer.table(f, peer.sess.addPath[f]).EndOfRIB = true
	}
	for _, f := range u.unkeyed {
		p.s.Unkeyed[TableRef{Peer: peer.Key, Family: f}] = true
	}
	return nil
}

func (p *parser) statisticsReport(c *cursor) error {
	if _, err := peerHeader(c); err != nil {
		return err
	}
	count, err := c.u32("stats count")
	if err != nil {
		return err
	}
	for i := uint32(0); i < count; i++ {
		typ, _ := c.u16("stat type")
		n, err := c.u16("stat length")
		if err != nil {
			return err
		}
		if _, err := c.bytes(int(n), fmt.Sprintf("stat %d", typ)); err != nil {
			return err
		}
	}
	if !c.empty() {
		return c.errorf("%d bytes after %d statistics", c.left(), count)
	}
	return nil
}

func (p *parser) routeMirroring(c *cursor) error {
	if _, err := peerHeader(c); err != nil {
		return err
	}
	for !c.empty() {
		typ, _ := c.u16("route mirroring TLV type")
		n, err := c.u16("route mirroring TLV length")
		if err != nil {
			return err
		}
		if _, err := c.bytes(int(n), fmt.Sprintf("route mirroring TLV %d", typ)); err != nil {
			return err
		}
	}
	return nil
}
