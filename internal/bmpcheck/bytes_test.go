package bmpcheck

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

// The tests build their bytes field by field with these, literally, and not
// with the generator's encoder: the two check each other.

// hx decodes hex digits; spaces and dots are for the reader.
func hx(s string) []byte {
	s = strings.NewReplacer(" ", "", ".", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func be16(v int) []byte { return []byte{byte(v >> 8), byte(v)} }
func be32(v uint32) []byte {
	return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix {
	return netip.MustParsePrefix(s)
}

// addr16 is a per-peer header's or Peer Up's 16-byte address field.
func addr16(s string) []byte {
	a := ip(s)
	if a.Is4() {
		return cat(make([]byte, 12), a.AsSlice())
	}
	return a.AsSlice()
}

// bmpMsg is a BMP message: version 3, length, type, body.
func bmpMsg(typ MsgType, body ...[]byte) []byte {
	b := cat(body...)
	return cat([]byte{3}, be32(uint32(6+len(b))), []byte{byte(typ)}, b)
}

// hdr is a per-peer header with timestamp 1700000000.000001.
func hdr(typ, flags uint8, rd string, addr string, as uint32, id string) []byte {
	return cat([]byte{typ, flags}, hx(rd), addr16(addr), be32(as), ip(id).AsSlice(), be32(1700000000), be32(1))
}

const rd0 = "0000000000000000"

// bgpMsg is a BGP message: marker, length, type, body.
func bgpMsg(typ uint8, body ...[]byte) []byte {
	b := cat(body...)
	return cat(hx("ffffffffffffffffffffffffffffffff"), be16(19+len(b)), []byte{typ}, b)
}

// openMsg is an OPEN with one Capabilities parameter holding caps.
func openMsg(as int, id string, caps ...[]byte) []byte {
	c := cat(caps...)
	return bgpMsg(1, []byte{4}, be16(as), be16(90), ip(id).AsSlice(), []byte{byte(2 + len(c)), 2, byte(len(c))}, c)
}

func capab(code uint8, value ...[]byte) []byte {
	v := cat(value...)
	return cat([]byte{code, byte(len(v))}, v)
}

func capMP(afi, safi int) []byte { return capab(1, be16(afi), []byte{0, byte(safi)}) }
func capAS4(as uint32) []byte    { return capab(65, be32(as)) }

// capAP is an ADD-PATH capability of one family and Send/Receive value.
func capAP(afi, safi, sr int) []byte { return capab(69, be16(afi), []byte{byte(safi), byte(sr)}) }

// attr is a path attribute with a 1-byte length; attrX with a 2-byte one.
func attr(flags, typ uint8, value ...[]byte) []byte {
	v := cat(value...)
	return cat([]byte{flags, typ, byte(len(v))}, v)
}

func attrX(flags, typ uint8, value ...[]byte) []byte {
	v := cat(value...)
	return cat([]byte{flags | 0x10, typ}, be16(len(v)), v)
}

// updateMsg is a BGP UPDATE.
func updateMsg(withdrawn, attrs, nlri []byte) []byte {
	return bgpMsg(2, be16(len(withdrawn)), withdrawn, be16(len(attrs)), attrs, nlri)
}

func peerUpMsg(peer []byte, local string, lport, rport int, sent, received []byte, info ...[]byte) []byte {
	return bmpMsg(MsgPeerUp, peer, addr16(local), be16(lport), be16(rport), sent, received, cat(info...))
}

func tlv(typ int, value string) []byte { return cat(be16(typ), be16(len(value)), []byte(value)) }

func initiation() []byte {
	return bmpMsg(MsgInitiation, tlv(1, "test router"), tlv(2, "r1"))
}

func initiationTLVs() []TLV { return []TLV{{1, "test router"}, {2, "r1"}} }

// canon is a canonical attribute list written out.
func canon(entries ...[]byte) Attrs { return Attrs(cat(entries...)) }

// ca is one canonical attribute entry.
func ca(flags, typ uint8, value ...[]byte) []byte {
	v := cat(value...)
	return cat([]byte{flags, typ}, be16(len(v)), v)
}

// mustEqual fails unless got equals want, with the Diff.
func mustEqual(t *testing.T, want, got *State) {
	t.Helper()
	if !want.Equal(got) {
		t.Fatalf("state differs:\n%s\nwant:\n%s\ngot:\n%s", want.Diff(got), want.Summary(), got.Summary())
	}
	if d := want.Diff(got); d != "" {
		t.Fatalf("Equal but Diff says:\n%s", d)
	}
}
