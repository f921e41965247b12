package rib

import "strconv"

// Family is a BGP address family: AFI and SAFI (RFC 4760).
type Family struct {
	AFI  uint16
	SAFI uint8
}

// Address families and subsequent address families this package keys, and a
// few it names in reasons.
const (
	afiIPv4  = 1
	afiIPv6  = 2
	afiL2VPN = 25
	afiLS    = 16388

	safiUnicast   = 1
	safiMulticast = 2
	safiLabeled   = 4 // RFC 8277
	safiVPN       = 128
)

// ipv4Unicast is the family of the NLRI and withdrawn routes fields of an
// UPDATE (RFC 4271).
var ipv4Unicast = Family{afiIPv4, safiUnicast}

// String names f: "ipv4-unicast", "ipv6-vpn", "l2vpn-evpn", or
// "afi-N-safi-M" for a pair it has no name for.
func (f Family) String() string {
	switch f {
	case Family{afiLS, 71}:
		return "bgp-ls"
	case Family{afiLS, 72}:
		return "bgp-ls-vpn"
	}
	var a, s string
	switch f.AFI {
	case afiIPv4:
		a = "ipv4"
	case afiIPv6:
		a = "ipv6"
	case afiL2VPN:
		a = "l2vpn"
	}
	switch f.SAFI {
	case safiUnicast:
		s = "unicast"
	case safiMulticast:
		s = "multicast"
	case safiLabeled:
		s = "labeled-unicast"
	case 5:
		s = "mvpn"
	case 65:
		s = "vpls"
	case 70:
		s = "evpn"
	case 73:
		s = "sr-policy"
	case safiVPN:
		s = "vpn"
	case 132:
		s = "rtc"
	case 133:
		s = "flowspec"
	case 134:
		s = "flowspec-vpn"
	}
	if a == "" || s == "" {
		return "afi-" + strconv.Itoa(int(f.AFI)) + "-safi-" + strconv.Itoa(int(f.SAFI))
	}
	return a + "-" + s
}

// kind is how a family's NLRI are laid out, and so which key it uses.
type kind uint8

const (
	kindNone kind = iota // not keyable
	kindV4               // IPv4 prefix
	kindV6               // IPv6 prefix
	kindL4               // labels + IPv4 prefix (RFC 8277)
	kindL6               // labels + IPv6 prefix
	kindVPN4             // labels + RD + IPv4 prefix (RFC 4364)
	kindVPN6             // labels + RD + IPv6 prefix (RFC 4659)
)

func kindOf(f Family) kind {
	v6 := f.AFI == afiIPv6
	if f.AFI != afiIPv4 && !v6 {
		return kindNone
	}
	switch f.SAFI {
	case safiUnicast, safiMulticast:
		return pick(v6, kindV6, kindV4)
	case safiLabeled:
		return pick(v6, kindL6, kindL4)
	case safiVPN:
		return pick(v6, kindVPN6, kindVPN4)
	}
	return kindNone
}

func pick[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

func (k kind) labeled() bool { return k >= kindL4 }
func (k kind) vpn() bool     { return k >= kindVPN4 }
func (k kind) v6() bool      { return k == kindV6 || k == kindL6 || k == kindVPN6 }

func (k kind) maxBits() int { return pick(k.v6(), 128, 32) }

// nlri is one decoded NLRI. addr holds the prefix, masked to its length
// and zero-padded; label aliases the bytes it was decoded from.
type nlri struct {
	id    uint32
	plen  uint8
	addr  [16]byte
	rd    [8]byte
	label []byte
}

// parseNLRI decodes the NLRI at the start of b into n and returns the bytes
// it used, or 0 and what is wrong. With ADD-PATH a 4-byte path identifier
// comes first (RFC 7911). A labeled family's announcement carries one label,
// or with multi (RFC 8277 Multiple Labels) labels up to the one with the
// bottom-of-stack bit; a withdrawal carries one 3-byte Compatibility field
// whose value is ignored.
func parseNLRI(b []byte, k kind, addPath, withdraw, multi bool, n *nlri) (int, string) {
	off := 0
	n.id = 0
	if addPath {
		if len(b) < 4 {
			return 0, "truncated path identifier"
		}
		n.id = be32(b)
		off = 4
	}
	if off >= len(b) {
		return 0, "missing prefix length"
	}
	bitsLeft := int(b[off])
	off++
	n.label = nil
	if k.labeled() {
		start := off
		for {
			if bitsLeft < 24 || len(b)-off < 3 {
				return 0, "truncated label"
			}
			bos := b[off+2]&1 != 0
			off += 3
			bitsLeft -= 24
			if withdraw || !multi || bos {
				break
			}
		}
		n.label = b[start:off]
	}
	if k.vpn() {
		if bitsLeft < 64 || len(b)-off < 8 {
			return 0, "truncated route distinguisher"
		}
		copy(n.rd[:], b[off:off+8])
		off += 8
		bitsLeft -= 64
	}
	if bitsLeft > k.maxBits() {
		return 0, "prefix length " + strconv.Itoa(bitsLeft) + " exceeds " + strconv.Itoa(k.maxBits())
	}
	nb := (bitsLeft + 7) / 8
	if len(b)-off < nb {
		return 0, "truncated prefix"
	}
	n.plen = uint8(bitsLeft)
	n.addr = [16]byte{}
	copy(n.addr[:], b[off:off+nb])
	if r := bitsLeft % 8; r != 0 {
		n.addr[nb-1] &= 0xff << (8 - r) // bits past the length are not the prefix's
	}
	return off + nb, ""
}

// appendNLRI encodes n as parseNLRI reads an announcement.
func appendNLRI(b []byte, k kind, addPath bool, n *nlri) []byte {
	if addPath {
		b = append(b, byte(n.id>>24), byte(n.id>>16), byte(n.id>>8), byte(n.id))
	}
	total := int(n.plen) + 8*len(n.label)
	if k.vpn() {
		total += 64
	}
	b = append(b, byte(total))
	b = append(b, n.label...)
	if k.vpn() {
		b = append(b, n.rd[:]...)
	}
	return append(b, n.addr[:(int(n.plen)+7)/8]...)
}

// nlriLen is the encoded size of n.
func nlriLen(k kind, addPath bool, n *nlri) int {
	l := 1 + len(n.label) + (int(n.plen)+7)/8
	if addPath {
		l += 4
	}
	if k.vpn() {
		l += 8
	}
	return l
}
