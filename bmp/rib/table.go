package rib

import (
	"math/bits"
	"math/rand/v2"
	"unsafe"
)

// A route key is a fixed-size, comparable value per address family: the
// prefix bytes (zero-padded, not masked: they are replayed as received), its
// length in bits, the ADD-PATH path identifier when the table uses one, and
// the route distinguisher for VPN families. Labels are not part of the key.
type key[K any] interface {
	comparable
	hash(seed uint64) uint64
	from(n *nlri) K // the key of a decoded NLRI
	fill(n *nlri)   // the inverse of from, for replay
}

// Key layouts. Every field is a uint32, so the slots of a table pack with
// 4-byte alignment: k4 slots are 12 bytes, k6 slots 24.
type (
	k4  struct{ a, m uint32 }     // IPv4 prefix, m = length
	k4p struct{ a, id, m uint32 } // IPv4 prefix with path id
	k6  struct {
		a [4]uint32
		m uint32
	} // IPv6 prefix
	k6p struct {
		a     [4]uint32
		id, m uint32
	} // IPv6 prefix with path id
	kv4 struct {
		rd       [2]uint32
		a, id, m uint32
	} // VPNv4: RD, prefix, path id (0 without ADD-PATH)
	kv6 struct { // VPNv6: RD, prefix, path id (0 without ADD-PATH)
		rd    [2]uint32
		a     [4]uint32
		id, m uint32
	}
)

// mum is the multiply-fold mixer: the 128-bit product of a and b folded to
// 64 bits.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

const (
	mix0 = 0xa0761d6478bd642f
	mix1 = 0xe7037ed1a0b428db
	mix2 = 0x8ebc6af09c88c6e3
)

func w64(a, b uint32) uint64 { return uint64(a)<<32 | uint64(b) }

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func put32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

func addr4(n *nlri) uint32 { return be32(n.addr[:4]) }

func addr6(n *nlri) (a [4]uint32) {
	for i := range a {
		a[i] = be32(n.addr[4*i:])
	}
	return a
}

func fill6(n *nlri, a [4]uint32) {
	for i := range a {
		put32(n.addr[4*i:], a[i])
	}
}

func rdOf(n *nlri) [2]uint32 { return [2]uint32{be32(n.rd[:4]), be32(n.rd[4:])} }

func fillRD(n *nlri, rd [2]uint32) { put32(n.rd[:4], rd[0]); put32(n.rd[4:], rd[1]) }

func (k k4) hash(s uint64) uint64 { return mum(w64(k.a, k.m)^s, mix0) }
func (k4) from(n *nlri) k4        { return k4{a: addr4(n), m: uint32(n.plen)} }
func (k k4) fill(n *nlri)         { put32(n.addr[:4], k.a); n.plen = uint8(k.m) }

func (k k4p) hash(s uint64) uint64 { return mum(w64(k.a, k.m)^s, w64(k.id, 0)^mix0) }
func (k4p) from(n *nlri) k4p       { return k4p{a: addr4(n), id: n.id, m: uint32(n.plen)} }
func (k k4p) fill(n *nlri)         { put32(n.addr[:4], k.a); n.id, n.plen = k.id, uint8(k.m) }

func (k k6) hash(s uint64) uint64 {
	return mum(w64(k.a[0], k.a[1])^s, w64(k.a[2], k.a[3])^mix0) ^ mum(uint64(k.m)^s, mix1)
}
func (k6) from(n *nlri) k6 { return k6{a: addr6(n), m: uint32(n.plen)} }
func (k k6) fill(n *nlri)  { fill6(n, k.a); n.plen = uint8(k.m) }

func (k k6p) hash(s uint64) uint64 {
	return mum(w64(k.a[0], k.a[1])^s, w64(k.a[2], k.a[3])^mix0) ^ mum(w64(k.id, k.m)^s, mix1)
}
func (k6p) from(n *nlri) k6p { return k6p{a: addr6(n), id: n.id, m: uint32(n.plen)} }
func (k k6p) fill(n *nlri)   { fill6(n, k.a); n.id, n.plen = k.id, uint8(k.m) }

func (k kv4) hash(s uint64) uint64 {
	return mum(w64(k.rd[0], k.rd[1])^s, w64(k.a, k.m)^mix0) ^ mum(uint64(k.id)^s, mix1)
}
func (kv4) from(n *nlri) kv4 { return kv4{rd: rdOf(n), a: addr4(n), id: n.id, m: uint32(n.plen)} }
func (k kv4) fill(n *nlri) {
	fillRD(n, k.rd)
	put32(n.addr[:4], k.a)
	n.id, n.plen = k.id, uint8(k.m)
}

func (k kv6) hash(s uint64) uint64 {
	return mum(w64(k.rd[0], k.rd[1])^s, w64(k.a[0], k.a[1])^mix0) ^
		mum(w64(k.a[2], k.a[3])^s, w64(k.id, k.m)^mix1)
}
func (kv6) from(n *nlri) kv6 { return kv6{rd: rdOf(n), a: addr6(n), id: n.id, m: uint32(n.plen)} }
func (k kv6) fill(n *nlri) {
	fillRD(n, k.rd)
	fill6(n, k.a)
	n.id, n.plen = k.id, uint8(k.m)
}

// slot is one entry of an htab. v is the attribute index; 0 marks an empty
// slot, tombstone a route withdrawn in a delta.
type slot[K any] struct {
	k K
	v uint32
}

// tombstone is the value of a delta slot whose route is withdrawn.
const tombstone = ^uint32(0)

// Table sizing: linear probing at most loadNum/loadDen full, grown by half
// its size, so the load stays between about 0.53 and 0.8.
const (
	minSlots = 8
	loadNum  = 4
	loadDen  = 5
)

// htab is an open-addressed hash table with linear probing and
// backward-shift deletion: no tombstones of its own, no per-entry pointers.
// The slot index of a hash is the high half of hash*len(slots) (Lemire's
// reduction), so any size works. lbl, when non-nil, holds each slot's label
// word, parallel to slots.
type htab[K key[K]] struct {
	slots []slot[K]
	lbl   []uint32
	n     int
	seed  uint64
}

func newHtab[K key[K]](labeled bool) htab[K] {
	t := htab[K]{seed: rand.Uint64() | 1}
	if labeled {
		t.lbl = []uint32{}
	}
	return t
}

func (t *htab[K]) home(k K) int {
	hi, _ := bits.Mul64(k.hash(t.seed), uint64(len(t.slots)))
	return int(hi)
}

// find returns the slot holding k, or -1.
func (t *htab[K]) find(k K) int {
	if t.n == 0 {
		return -1
	}
	i := t.home(k)
	for {
		s := &t.slots[i]
		if s.v == 0 {
			return -1
		}
		if s.k == k {
			return i
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

// slotBytes is the size of one slot, labels included.
func (t *htab[K]) slotBytes() int64 {
	n := int64(unsafe.Sizeof(slot[K]{}))
	if t.lbl != nil {
		n += 4
	}
	return n
}

// bytes is the memory the table's arrays hold.
func (t *htab[K]) bytes() int64 { return int64(len(t.slots)) * t.slotBytes() }

// grownSize is the slot count after the next growth.
func (t *htab[K]) grownSize() int {
	return max(minSlots, len(t.slots)+len(t.slots)/2)
}

// full reports whether one more key needs a growth first.
func (t *htab[K]) full() bool {
	return (t.n+1)*loadDen > len(t.slots)*loadNum
}

// put sets k to (v, l), returning the previous value (0 if k was absent).
// The caller has made room (full false or grow done).
func (t *htab[K]) put(k K, v, l uint32) (ov, ol uint32) {
	i := t.home(k)
	for {
		s := &t.slots[i]
		if s.v == 0 {
			s.k, s.v = k, v
			if t.lbl != nil {
				t.lbl[i] = l
			}
			t.n++
			return 0, 0
		}
		if s.k == k {
			ov, s.v = s.v, v
			if t.lbl != nil {
				ol, t.lbl[i] = t.lbl[i], l
			}
			return ov, ol
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

// grow rehashes into size slots.
func (t *htab[K]) grow(size int) {
	old, oldl := t.slots, t.lbl
	t.slots = make([]slot[K], size)
	if oldl != nil {
		t.lbl = make([]uint32, size)
	}
	t.n = 0
	for i := range old {
		if old[i].v != 0 {
			var l uint32
			if oldl != nil {
				l = oldl[i]
			}
			t.put(old[i].k, old[i].v, l)
		}
	}
}

// del removes k, returning its value (0 if absent).
func (t *htab[K]) del(k K) (ov, ol uint32) {
	i := t.find(k)
	if i < 0 {
		return 0, 0
	}
	ov = t.slots[i].v
	if t.lbl != nil {
		ol = t.lbl[i]
	}
	t.removeAt(i)
	return ov, ol
}

// removeAt empties slot i and shifts back the entries of its probe run
// that would no longer be found.
func (t *htab[K]) removeAt(i int) {
	n := len(t.slots)
	j := i
	for {
		if j++; j == n {
			j = 0
		}
		s := &t.slots[j]
		if s.v == 0 {
			break
		}
		h := t.home(s.k)
		// s may move to i unless its home lies cyclically in (i, j].
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			t.slots[i] = *s
			if t.lbl != nil {
				t.lbl[i] = t.lbl[j]
			}
			i = j
		}
	}
	t.slots[i] = slot[K]{}
	if t.lbl != nil {
		t.lbl[i] = 0
	}
	t.n--
}
