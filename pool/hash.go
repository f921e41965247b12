package pool

import "net/netip"

// FNV-1a 64 and the splitmix64 finalizer: the placement hash of the
// package doc, which must not change (TestScoreGolden).
const (
	fnvOffset = 0xcbf29ce484222325
	fnvPrime  = 0x100000001b3
	mixMul1   = 0xbf58476d1ce4e5b9
	mixMul2   = 0x94d049bb133111eb
)

// memberKey is addr in the canonical form the hash reads and ties are
// broken by: netip.AddrPort.String() with an IPv4-mapped address unmapped.
func memberKey(addr netip.AddrPort) string { return unmap(addr).String() }

// memberPrefix is the FNV-1a 64 state after a member's key and the zero
// byte: what every score of that member starts from.
func memberPrefix(key string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime
	}
	return h * fnvPrime // ^= 0, then the multiply
}

// scoreFrom finishes a member's score for a router given as 16 bytes.
func scoreFrom(prefix uint64, router *[16]byte) uint64 {
	h := prefix
	for _, b := range router {
		h ^= uint64(b)
		h *= fnvPrime
	}
	h ^= h >> 30
	h *= mixMul1
	h ^= h >> 27
	h *= mixMul2
	h ^= h >> 31
	return h
}

// score is the placement score of member for router, as the package doc
// specifies it.
func score(member netip.AddrPort, router netip.Addr) uint64 {
	r := router.As16()
	return scoreFrom(memberPrefix(memberKey(member)), &r)
}

// unmap is addr with an IPv4-mapped IPv6 address unmapped.
func unmap(addr netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
}
