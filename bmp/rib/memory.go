package rib

import (
	"math"
	"sync/atomic"
)

// Memory is the process-wide budget of cached state (resync_memory), shared
// by the Routers made with it. Its methods are safe for concurrent use.
type Memory struct {
	limit int64
	used  atomic.Int64
	peak  atomic.Int64
}

// NewMemory returns a budget of limit bytes; limit <= 0 means no bound.
func NewMemory(limit int64) *Memory {
	return &Memory{limit: limit}
}

// Used is the number of bytes the Routers hold now.
func (m *Memory) Used() int64 { return m.used.Load() }

// Peak is the most bytes held at once so far.
func (m *Memory) Peak() int64 { return m.peak.Load() }

// Limit is the budget, or 0 when there is none.
func (m *Memory) Limit() int64 { return max(m.limit, 0) }

// reserve takes n bytes from the budget, or reports that they would exceed
// it and takes nothing.
func (m *Memory) reserve(n int64) bool {
	u := m.used.Add(n)
	if m.limit > 0 && u > m.limit {
		m.used.Add(-n)
		return false
	}
	for p := m.peak.Load(); u > p && !m.peak.CompareAndSwap(p, u); p = m.peak.Load() {
	}
	return true
}

func (m *Memory) release(n int64) { m.used.Add(-n) }

// Accounting estimates (see the package documentation): what Go really
// allocates for each kind of object, rounded up.
const (
	// poolEntryOverhead is one interned string's cost besides its bytes:
	// its 16-byte header in the pool's slice, a 4-byte reference count, and
	// a map slot (16-byte key, 4-byte value, control byte, load factor).
	poolEntryOverhead = 64
	peerOverhead      = 256 // peer struct, map entries, slices
	viewOverhead      = 192
	tableOverhead     = 192 // table struct, ribT, htab headers
)

// multiBit marks a label word that indexes the pool of label stacks rather
// than holding one 3-byte label.
const multiBit = 1 << 31

// maxPoolIndex bounds a pool, so that an index never reaches multiBit or
// tombstone.
const maxPoolIndex = math.MaxInt32 - 1

// pool interns byte strings with reference counts: routes that share an
// attribute set (or a label stack) share one copy. Index 0 is never used.
//
// While a snapshot holds the pool (frozen), an entry whose count drops to
// zero stays, so that the snapshot can still read it; thaw frees those
// still unused. Entries free before the freeze may be reused meanwhile: no
// frozen route refers to them.
type pool struct {
	data     []string
	refs     []uint32
	index    map[string]uint32
	free     []uint32
	deferred []uint32
	frozen   bool
	live     int
}

func newPool() pool {
	return pool{data: []string{""}, refs: []uint32{0}, index: map[string]uint32{}}
}

func entryBytes(s string) int64 { return int64((len(s)+7)&^7) + poolEntryOverhead }

// lookup returns the index of b, adding it with no references if new. A
// new entry the caller does not reference must be passed to settle.
func (p *pool) lookup(r *Router, b []byte) (uint32, error) {
	if i, ok := p.index[string(b)]; ok {
		return i, nil
	}
	if len(p.data) > maxPoolIndex && len(p.free) == 0 {
		return 0, r.overMemory("interned values exceed 2^31")
	}
	s := string(b)
	if err := r.charge(entryBytes(s)); err != nil {
		return 0, err
	}
	var i uint32
	if n := len(p.free); n > 0 {
		i, p.free = p.free[n-1], p.free[:n-1]
		p.data[i] = s
	} else {
		i = uint32(len(p.data))
		p.data = append(p.data, s)
		p.refs = append(p.refs, 0)
	}
	p.index[s] = i
	p.live++
	return i, nil
}

func (p *pool) ref(i uint32) { p.refs[i]++ }

func (p *pool) unref(r *Router, i uint32) {
	if p.refs[i]--; p.refs[i] == 0 {
		p.drop(r, i)
	}
}

// settle frees i if nothing references it.
func (p *pool) settle(r *Router, i uint32) {
	if p.refs[i] == 0 {
		p.drop(r, i)
	}
}

func (p *pool) drop(r *Router, i uint32) {
	if p.frozen {
		p.deferred = append(p.deferred, i)
		return
	}
	s := p.data[i]
	delete(p.index, s)
	p.data[i] = ""
	p.free = append(p.free, i)
	p.live--
	r.uncharge(entryBytes(s))
}

// thaw ends a freeze, freeing the entries that became unused during it.
func (p *pool) thaw(r *Router) {
	p.frozen = false
	for _, i := range p.deferred {
		if p.refs[i] == 0 && p.data[i] != "" {
			p.drop(r, i)
		}
	}
	p.deferred = nil
}

// labelWord returns the word a table keeps for a label stack: one label
// inline, a longer stack as a reference into r.labels.
func (r *Router) labelWord(l []byte) (uint32, error) {
	if len(l) == 3 {
		return uint32(l[0])<<16 | uint32(l[1])<<8 | uint32(l[2]), nil
	}
	i, err := r.labels.lookup(r, l)
	if err != nil {
		return 0, err
	}
	r.labels.ref(i)
	return multiBit | i, nil
}

func (r *Router) unrefLabel(w uint32) {
	if w&multiBit != 0 {
		r.labels.unref(r, w&^multiBit)
	}
}

// labelBytes appends the label stack of word w, as kept by labelWord.
func labelBytes(b []byte, w uint32, stacks []string) []byte {
	if w&multiBit != 0 {
		return append(b, stacks[w&^multiBit]...)
	}
	return append(b, byte(w>>16), byte(w>>8), byte(w))
}
