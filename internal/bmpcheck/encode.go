package bmpcheck

import (
	"encoding/binary"
	"net/netip"
)

// The generator's wire encoders (RFC 7854, 4271, 4760, 7911, 8277).

// bmpMessage is a BMP message: version 3, length, type, then body.
func bmpMessage(typ MsgType, body ...[]byte) []byte {
	n := commonHeaderSize
	for _, b := range body {
		n += len(b)
	}
	out := make([]byte, 0, n)
	out = append(out, 3)
	out = binary.BigEndian.AppendUint32(out, uint32(n))
	out = append(out, byte(typ))
	for _, b := range body {
		out = append(out, b...)
	}
	return out
}

// addrField is a 16-byte address field: an IPv4 address after 12 zero bytes.
func addrField(a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(make([]byte, 12), v[:]...)
	}
	v := a.As16()
	return v[:]
}

// perPeerHeader encodes k with a timestamp of ts seconds.
func perPeerHeader(k PeerKey, ts uint32) []byte {
	b := make([]byte, 0, peerHeaderSize)
	b = append(b, k.Type, k.Flags)
	b = append(b, k.Distinguisher[:]...)
	b = append(b, addrField(k.Address)...)
	b = binary.BigEndian.AppendUint32(b, k.AS)
	id := k.BGPID.As4()
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint32(b, ts)
	return binary.BigEndian.AppendUint32(b, 0)
}

// bgpMessage is a BGP message: marker, length, type, body.
func bgpMessage(typ uint8, body []byte) []byte {
	b := make([]byte, 16, bgpHeaderSize+len(body))
	for i := range b {
		b[i] = 0xff
	}
	b = binary.BigEndian.AppendUint16(b, uint16(bgpHeaderSize+len(body)))
	b = append(b, typ)
	return append(b, body...)
}

// openMessage is an OPEN with its capabilities in one parameter.
func openMessage(as uint32, id netip.Addr, caps []byte) []byte {
	as16 := uint16(23456) // AS_TRANS (RFC 6793)
	if as <= 0xffff {
		as16 = uint16(as)
	}
	b := []byte{4}
	b = binary.BigEndian.AppendUint16(b, as16)
	b = binary.BigEndian.AppendUint16(b, 90)
	v := id.As4()
	b = append(b, v[:]...)
	b = append(b, byte(2+len(caps)), 2, byte(len(caps)))
	return bgpMessage(bgpOpen, append(b, caps...))
}

func appendCapability(b []byte, code uint8, value []byte) []byte {
	b = append(b, code, byte(len(value)))
	return append(b, value...)
}

func appendTLV(b []byte, t TLV) []byte {
	b = binary.BigEndian.AppendUint16(b, t.Type)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.Value)))
	return append(b, t.Value...)
}

// appendAttr encodes a path attribute, with a 2-byte length when it needs
// one.
func appendAttr(b []byte, a Attr) []byte {
	if len(a.Value) > 255 {
		b = append(b, a.Flags|attrExtLen, a.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(a.Value)))
	} else {
		b = append(b, a.Flags&^attrExtLen, a.Type, byte(len(a.Value)))
	}
	return append(b, a.Value...)
}

// appendNLRI encodes one route of f: the path id if addPath, the length in
// bits, the labels (or, withdrawing, the 0x800000 compatibility field), the
// RD for VPN, the prefix's significant bytes.
func appendNLRI(b []byte, f Family, k RouteKey, labels Labels, addPath, withdraw bool) []byte {
	if addPath {
		b = binary.BigEndian.AppendUint32(b, k.PathID)
	}
	bits := k.Prefix.Bits()
	if f.labeled() {
		if withdraw {
			labels = "\x80\x00\x00"
		}
		bits += 8 * len(labels)
	}
	if f.vpn() {
		bits += 64
	}
	b = append(b, byte(bits))
	if f.labeled() {
		b = append(b, labels...)
	}
	if f.vpn() {
		b = append(b, k.RD[:]...)
	}
	addr := k.Prefix.Addr().AsSlice()
	return append(b, addr[:(k.Prefix.Bits()+7)/8]...)
}
