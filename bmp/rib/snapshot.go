package rib

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// snapShared is what a Snapshot and its Router share: the Router learns of
// Close through it, on its own goroutine.
type snapShared struct{ closed atomic.Bool }

// Snapshot is the state of a Router as of one message boundary, replayed as
// a BMP stream. Its methods are safe for concurrent use, and with the
// Router being fed.
type Snapshot struct {
	mu     sync.Mutex
	closed bool
	shared *snapShared
	routes int

	init   []byte
	ups    [][]byte
	tabs   []snapTable
	attrs  []string // the Router's attribute pool as of the snapshot
	stacks []string // its label stacks

	buf     []byte // replay bytes produced and not yet read
	pos     int
	step    int // next of: Initiation, Peer Ups
	ti      int // next table
	ordered bool
	order   []uint32 // the table's slots grouped by attribute set
	oi      int
	counts  []uint32
	n       nlri
	lb      []byte
	err     error
}

// snapTable is one table as the snapshot replays it.
type snapTable struct {
	hdr     [perPeerLen]byte // the view's per-peer header, timestamp zero
	fam     Family
	kind    kind
	addPath bool
	max     int // largest UPDATE
	ft      frozen
}

// chunk is how many replay bytes a Read produces at a time.
const chunk = 64 << 10

// Snapshot freezes the state as of the last complete message fed: what a
// collector holds after every message so far. A leg replayed from it then
// gets Pending (as it is when Snapshot returns) and every byte fed after,
// so that no message is lost, doubled or cut. The tables become read-only
// for the snapshot, and Feed writes a delta over them that is merged back
// on the first call after Close. At most one snapshot is open at a time
// (ErrSnapshotOpen); a Router not Keeping has none (ErrNotKeeping, wrapping
// Status.Err).
func (r *Router) Snapshot() (*Snapshot, error) {
	r.settle()
	switch {
	case r.released:
		return nil, fmt.Errorf("%s: %w: released", r.name, ErrNotKeeping)
	case r.status.State != Keeping:
		return nil, fmt.Errorf("%w: %w", ErrNotKeeping, r.status.Err)
	case r.snap != nil:
		return nil, fmt.Errorf("%s: %w", r.name, ErrSnapshotOpen)
	}
	s := &Snapshot{shared: &snapShared{}, init: r.init, attrs: r.attrs.data, stacks: r.labels.data}
	for _, p := range r.order {
		s.ups = append(s.ups, p.up)
	}
	for _, p := range r.order {
		m := p.maxUpdate()
		for _, v := range p.views {
			var hdr [perPeerLen]byte
			copy(hdr[:], v.key[:])
			for _, t := range v.tables {
				t.frozen = true
				r.frozen = append(r.frozen, t)
				s.tabs = append(s.tabs, snapTable{hdr, t.fam, t.kind, t.addPath, m, t.rt.freeze()})
				s.routes += t.routes
			}
		}
	}
	r.attrs.frozen, r.labels.frozen = true, true
	r.snap = s.shared
	return s, nil
}

// Routes is the number of routes the snapshot replays.
func (s *Snapshot) Routes() int { return s.routes }

// Read is io.Reader over the replay: the Initiation, every Peer Up as
// received in the order the peers came up, then per peer, RIB and AFI/SAFI
// the routes as Route Monitoring messages (per-peer header timestamp zero;
// UPDATEs of one attribute set each, packed up to the session's message
// size) and an End-of-RIB. It returns io.EOF at the end, and
// ErrSnapshotClosed after Close.
func (s *Snapshot) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrSnapshotClosed
	}
	for s.pos == len(s.buf) {
		if s.err != nil {
			return 0, s.err
		}
		s.buf, s.pos = s.buf[:0], 0
		s.fill()
	}
	n := copy(p, s.buf[s.pos:])
	s.pos += n
	return n, nil
}

// Close releases the snapshot; the Router merges its tables back on its
// next call. It is idempotent.
func (s *Snapshot) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.init, s.ups, s.tabs, s.attrs, s.stacks = nil, nil, nil, nil, nil
	s.buf, s.order, s.counts, s.lb = nil, nil, nil, nil
	s.shared.closed.Store(true)
}

// fill appends about a chunk of replay to buf, or sets err (io.EOF at the
// end).
func (s *Snapshot) fill() {
	for len(s.buf) < chunk {
		switch {
		case s.step == 0:
			s.buf = append(s.buf, s.init...)
			s.step++
		case s.step <= len(s.ups):
			s.buf = append(s.buf, s.ups[s.step-1]...)
			s.step++
		case s.ti < len(s.tabs):
			if err := s.table(&s.tabs[s.ti]); err != nil {
				s.err = err
				return
			}
		default:
			if len(s.buf) == 0 {
				s.err = io.EOF
			}
			return
		}
	}
}

// table continues the replay of t.
func (s *Snapshot) table(t *snapTable) error {
	if !s.ordered {
		if err := s.group(t); err != nil {
			return err
		}
	}
	for s.oi < len(s.order) && len(s.buf) < chunk {
		if err := s.update(t); err != nil {
			return err
		}
	}
	if s.oi == len(s.order) {
		s.eor(t)
		t.ft = nil
		s.ti++
		s.ordered = false
	}
	return nil
}

// group orders t's slots by attribute index (a counting sort).
func (s *Snapshot) group(t *snapTable) error {
	na := len(s.attrs)
	s.counts = slices.Grow(s.counts[:0], na)[:na]
	clear(s.counts)
	size := t.ft.size()
	for i := range size {
		if a := t.ft.attr(i); a != 0 {
			if int(a) >= na {
				return fmt.Errorf("rib: replay of %s: attribute index %d out of range %d", t.fam, a, na)
			}
			s.counts[a]++
		}
	}
	sum := uint32(0)
	for a, c := range s.counts {
		s.counts[a] = sum
		sum += c
	}
	s.order = slices.Grow(s.order[:0], int(sum))[:sum]
	for i := range size {
		if a := t.ft.attr(i); a != 0 {
			s.order[s.counts[a]] = uint32(i)
			s.counts[a]++
		}
	}
	s.oi, s.ordered, s.n = 0, true, nlri{}
	return nil
}

// header appends a BMP common header (length patched by finish), t's
// per-peer header and a BGP UPDATE header with no withdrawn routes, and
// returns the message's start.
func (s *Snapshot) header(t *snapTable) int {
	start := len(s.buf)
	s.buf = append(s.buf, bmp.Version, 0, 0, 0, 0, byte(bmp.TypeRouteMonitoring))
	s.buf = append(s.buf, t.hdr[:]...)
	s.buf = append(s.buf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, bgpUpdate, 0, 0)
	return start
}

// finish patches the lengths of the message at start.
func (s *Snapshot) finish(t *snapTable, start int) error {
	bgp := len(s.buf) - start - bmp.HeaderLen - perPeerLen
	if bgp > maxBGPLen {
		return fmt.Errorf("rib: replay of %s: UPDATE of %d bytes exceeds %d", t.fam, bgp, maxBGPLen)
	}
	binary.BigEndian.PutUint32(s.buf[start+1:], uint32(len(s.buf)-start))
	binary.BigEndian.PutUint16(s.buf[start+bmp.HeaderLen+perPeerLen+16:], uint16(bgp))
	return nil
}

// update appends one UPDATE of the routes from order[oi] on that share its
// attribute set, as many as fit in t.max bytes (at least one).
func (s *Snapshot) update(t *snapTable) error {
	attr := t.ft.attr(int(s.order[s.oi]))
	as := s.attrs[attr]
	start := s.header(t)
	alAt := len(s.buf)
	s.buf = append(s.buf, 0, 0) // path attributes length
	mpAt, tail := -1, ""
	if as[0] == tagMPReach {
		nhl := int(as[1])
		tail = as[2+nhl:]
		mpAt = len(s.buf)
		s.buf = append(s.buf, 0x80|attrExtLen, attrMPReach, 0, 0,
			byte(t.fam.AFI>>8), byte(t.fam.AFI), t.fam.SAFI, byte(nhl))
		s.buf = append(s.buf, as[2:2+nhl]...)
		s.buf = append(s.buf, 0) // reserved (RFC 4760 §3)
	} else {
		s.buf = append(s.buf, as[1:]...)
	}
	room := t.max - (len(s.buf) - start - bmp.HeaderLen - perPeerLen) - len(tail)
	for taken := 0; s.oi < len(s.order); taken++ {
		i := int(s.order[s.oi])
		if t.ft.attr(i) != attr {
			break
		}
		_, lw := t.ft.route(i, &s.n)
		if t.kind.labeled() {
			s.lb = labelBytes(s.lb[:0], lw, s.stacks)
			s.n.label = s.lb
		}
		l := nlriLen(t.kind, t.addPath, &s.n)
		if taken > 0 && l > room {
			break
		}
		room -= l
		s.buf = appendNLRI(s.buf, t.kind, t.addPath, &s.n)
		s.oi++
	}
	if mpAt >= 0 {
		if n := len(s.buf) - mpAt - 4; n <= 255 {
			s.buf[mpAt], s.buf[mpAt+2] = 0x80, byte(n)
			copy(s.buf[mpAt+3:], s.buf[mpAt+4:])
			s.buf = s.buf[:len(s.buf)-1]
		} else {
			binary.BigEndian.PutUint16(s.buf[mpAt+2:], uint16(n))
		}
		s.buf = append(s.buf, tail...)
		binary.BigEndian.PutUint16(s.buf[alAt:], uint16(len(s.buf)-alAt-2))
	} else {
		binary.BigEndian.PutUint16(s.buf[alAt:], uint16(len(as)-1))
	}
	return s.finish(t, start)
}

// eor appends t's End-of-RIB (RFC 4724 §2): an empty UPDATE for IPv4
// unicast, else one whose only attribute is an empty MP_UNREACH_NLRI.
func (s *Snapshot) eor(t *snapTable) {
	start := s.header(t)
	if t.fam == ipv4Unicast {
		s.buf = append(s.buf, 0, 0)
	} else {
		s.buf = append(s.buf, 0, 6, 0x80, attrMPUnrch, 3, byte(t.fam.AFI>>8), byte(t.fam.AFI), t.fam.SAFI)
	}
	_ = s.finish(t, start) // a few bytes: always fits
}
