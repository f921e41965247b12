package rib

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// State says whether a Router still keeps its session's state.
type State uint8

const (
	// Keeping: the state is complete and a snapshot replays it.
	Keeping State = iota
	// Unkeyable: the stream carries state this package cannot key (an
	// AFI/SAFI such as EVPN or flowspec, a route for a peer that is not
	// up, an unknown message or peer type).
	Unkeyable
	// OverMemory: the Memory limit was reached while this router grew
	// its cache; the cache was dropped.
	OverMemory
	// Failed: a malformed message; the stream cannot be followed.
	Failed
)

func (s State) String() string {
	switch s {
	case Keeping:
		return "keeping"
	case Unkeyable:
		return "unkeyable"
	case OverMemory:
		return "over-memory"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Status is a Router's State and, once it is not Keeping, why. A Router
// leaves Keeping at most once and never returns to it.
type Status struct {
	State State
	// Reason says briefly what ended keeping ("l2vpn-evpn routes",
	// "bad BGP marker"); empty while Keeping.
	Reason string
	// Err names the router and the byte offset in the stream, and wraps
	// ErrUnkeyable, ErrOverMemory or ErrMalformed; nil while Keeping.
	Err error
	// Terminated: a Termination message was seen. The state before it
	// is kept; nothing after it is.
	Terminated bool
}

// Errors. Status.Err wraps one of the first three; Snapshot's errors wrap
// one of the others.
var (
	ErrUnkeyable      = errors.New("state cannot be kept")
	ErrOverMemory     = errors.New("resync memory limit reached")
	ErrMalformed      = errors.New("malformed BMP message")
	ErrNotKeeping     = errors.New("no state kept")
	ErrSnapshotOpen   = errors.New("a snapshot is already open")
	ErrSnapshotClosed = errors.New("snapshot closed")
)

// Wire constants.
const (
	perPeerLen  = 42 // RFC 7854 §4.2
	bgpHdrLen   = 19 // RFC 4271 §4.1
	bgpOpen     = 1
	bgpUpdate   = 2
	keyLen      = 34 // per-peer header without its timestamp
	maxBGPLen   = 65535
	stdBGPLen   = 4096
	flagV       = 0x80
	flagL       = 0x40
	flagA       = 0x20
	flagO       = 0x10
	peerLocRIB  = 3
	attrMPReach = 14
	attrMPUnrch = 15
	attrExtLen  = 0x10
)

// pkey is a per-peer header without its timestamp: peer type, flags,
// distinguisher, address, AS and BGP ID.
type pkey [keyLen]byte

// Router is one router session's BMP state, fed with the session's bytes in
// order. Feed, Pending, Status, Stats, Snapshot and Release are called from
// one goroutine at a time; a Snapshot may be read on another.
type Router struct {
	name   string
	mem    *Memory
	held   int64 // bytes taken from mem
	status Status

	fed     int64 // bytes passed to Feed
	msgs    uint64
	pend    []byte // the incomplete trailing message
	pendOff int64
	pendCap int64 // cap(pend) as charged

	cur     int64    // offset of the message being handled
	curType bmp.Type // its type

	init   []byte
	peers  map[pkey]*peer
	order  []*peer // in the order they came up
	views  map[pkey]*view
	attrs  pool // interned attribute sets
	labels pool // interned label stacks of more than one label

	last    *view // the view of the last Route Monitoring
	scratch nlri
	sbuf    []byte // attributes without MP_REACH/MP_UNREACH
	kbuf    []byte // intern key

	snap     *snapShared // the open snapshot, until merged after its Close
	frozen   []*table
	retired  int64 // bytes of tables dropped while frozen, released at merge
	released bool
}

// peer is a peer that is up: its latest Peer Up and the views of its RIBs.
type peer struct {
	key        pkey
	up         []byte
	sent, recv caps
	views      []*view
	bytes      int64
}

// view is one RIB of a peer as Route Monitoring names it: the per-peer
// header (pre/post-policy, Adj-RIB-In/Out), and its tables per AFI/SAFI in
// the order they appeared.
type view struct {
	key    pkey
	peer   *peer
	out    bool
	tables []*table
}

// table is one view's routes of one AFI/SAFI.
type table struct {
	fam        Family
	kind       kind
	addPath    bool
	multiLabel bool
	routes     int
	frozen     bool // held by the open snapshot
	dead       bool // dropped while frozen
	rt         rtab
}

// NewRouter returns an empty Router drawing on mem (nil: no bound). name
// appears in errors, e.g. "router [2001:db8::1]:40000".
func NewRouter(mem *Memory, name string) *Router {
	if mem == nil {
		mem = NewMemory(0)
	}
	return &Router{
		name:   name,
		mem:    mem,
		peers:  map[pkey]*peer{},
		views:  map[pkey]*view{},
		attrs:  newPool(),
		labels: newPool(),
	}
}

// Name is the name given to NewRouter.
func (r *Router) Name() string { return r.name }

// Status reports whether the state is complete.
func (r *Router) Status() Status { return r.status }

func (r *Router) keeping() bool {
	return r.status.State == Keeping && !r.status.Terminated && !r.released
}

// Feed takes the next bytes of the stream. Each complete message updates
// the state; an incomplete trailing one waits (Pending). Feed never blocks
// and never fails the stream: a problem changes Status, after which Feed
// only counts bytes. b is not retained.
func (r *Router) Feed(b []byte) {
	r.settle()
	pos := r.fed
	r.fed += int64(len(b))
	if !r.keeping() {
		return
	}
	if len(r.pend) > 0 {
		n := r.fillPending(b)
		b, pos = b[n:], pos+int64(n)
	}
	for len(b) > 0 && r.keeping() {
		n, err := frameLen(b)
		if err != nil {
			r.stop(r.malformedAt(pos, err.Error()))
			return
		}
		if n == 0 || n > len(b) {
			r.stash(b, pos, n)
			return
		}
		r.handle(b[:n], pos)
		b, pos = b[n:], pos+int64(n)
	}
}

// Pending is what was fed after the last complete message: a prefix of one
// message, valid until the next Feed. It is nil once not Keeping or after a
// Termination.
func (r *Router) Pending() []byte {
	if !r.keeping() || len(r.pend) == 0 {
		return nil
	}
	return r.pend
}

// frameLen checks the common header fields present in b and returns the
// message length, or 0 while the length is not yet complete. The type is
// checked by the handler: an unknown one is unkeyable, not malformed.
func frameLen(b []byte) (int, error) {
	if len(b) >= 1 && b[0] != bmp.Version {
		return 0, fmt.Errorf("BMP version %d (want %d)", b[0], bmp.Version)
	}
	if len(b) < 5 {
		return 0, nil
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if n < bmp.HeaderLen || n > bmp.MaxMessageLen {
		return 0, fmt.Errorf("bad length: BMP message length %d (want %d..%d)", n, bmp.HeaderLen, bmp.MaxMessageLen)
	}
	if len(b) < bmp.HeaderLen {
		return 0, nil
	}
	return int(n), nil
}

// stash keeps the incomplete message b (n its length, 0 if unknown yet).
func (r *Router) stash(b []byte, pos int64, n int) {
	if err := r.growPending(max(n, len(b), 64)); err != nil {
		r.stop(err)
		return
	}
	r.pend = append(r.pend[:0], b...)
	r.pendOff = pos
}

// growPending makes cap(pend) at least c, charging for it.
func (r *Router) growPending(c int) error {
	if cap(r.pend) >= c {
		return nil
	}
	if err := r.charge(int64(c)); err != nil {
		return err
	}
	p := make([]byte, len(r.pend), c)
	copy(p, r.pend)
	r.uncharge(r.pendCap)
	r.pend, r.pendCap = p, int64(c)
	return nil
}

// fillPending completes the pending message from b and handles it once
// whole; it returns the bytes of b it used.
func (r *Router) fillPending(b []byte) int {
	used := 0
	if len(r.pend) < bmp.HeaderLen {
		k := min(bmp.HeaderLen-len(r.pend), len(b))
		r.pend = append(r.pend, b[:k]...)
		used = k
	}
	n, err := frameLen(r.pend)
	if err != nil {
		r.stop(r.malformedAt(r.pendOff, err.Error()))
		return len(b)
	}
	if n == 0 {
		return used
	}
	if err := r.growPending(n); err != nil {
		r.stop(err)
		return len(b)
	}
	k := min(n-len(r.pend), len(b)-used)
	r.pend = append(r.pend, b[used:used+k]...)
	used += k
	if len(r.pend) < n {
		return used
	}
	r.handle(r.pend, r.pendOff)
	r.pend = r.pend[:0]
	if r.pendCap > 64<<10 { // keep a small buffer, not the largest message seen
		r.uncharge(r.pendCap)
		r.pend, r.pendCap = nil, 0
	}
	return used
}

// handle applies one whole message that starts at stream offset off.
func (r *Router) handle(msg []byte, off int64) {
	r.msgs++
	r.cur, r.curType = off, bmp.Type(msg[5])
	var err error
	switch r.curType {
	case bmp.TypeRouteMonitoring:
		err = r.routeMonitoring(msg)
	case bmp.TypePeerUp:
		err = r.peerUp(msg)
	case bmp.TypePeerDown:
		err = r.peerDown(msg)
	case bmp.TypeInitiation:
		err = r.initiation(msg)
	case bmp.TypeTermination:
		r.status.Terminated = true
		r.dropPending()
	case bmp.TypeStatisticsReport, bmp.TypeRouteMirroring:
		// Live only: they carry no RIB state.
	default:
		err = r.unkeyable("BMP message type %d", msg[5])
	}
	if err != nil {
		r.stop(err)
	}
}

func (r *Router) initiation(msg []byte) error {
	if _, err := bmp.ParseInitiation(msg); err != nil {
		return r.malformed(bmp.HeaderLen, "%v", err)
	}
	if err := r.charge(int64(len(msg))); err != nil {
		return err
	}
	r.uncharge(int64(len(r.init)))
	r.init = append([]byte(nil), msg...)
	return nil
}

// stopErr is an error that ends keeping.
type stopErr struct {
	state  State
	reason string
	err    error
}

func (e *stopErr) Error() string { return e.err.Error() }
func (e *stopErr) Unwrap() error { return e.err }

// malformed reports a problem at byte pos of the current message.
func (r *Router) malformed(pos int, format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	return &stopErr{Failed, reason, fmt.Errorf("%s: %w: %s at offset %d, byte %d: %s",
		r.name, ErrMalformed, r.curType, r.cur, r.cur+int64(pos), reason)}
}

// malformedAt reports a framing problem at stream offset off.
func (r *Router) malformedAt(off int64, reason string) error {
	return &stopErr{Failed, reason, fmt.Errorf("%s: %w at offset %d: %s", r.name, ErrMalformed, off, reason)}
}

func (r *Router) unkeyable(format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	return &stopErr{Unkeyable, reason, fmt.Errorf("%s: %w: %s (%s message at offset %d)",
		r.name, ErrUnkeyable, reason, r.curType, r.cur)}
}

func (r *Router) overMemory(reason string) error {
	return &stopErr{OverMemory, reason, fmt.Errorf("%s: %w: %s (%s message at offset %d)",
		r.name, ErrOverMemory, reason, r.curType, r.cur)}
}

// charge takes n bytes from the Memory for this router.
func (r *Router) charge(n int64) error {
	if !r.mem.reserve(n) {
		return r.overMemory(fmt.Sprintf("limit of %d bytes reached, %d in use, this router holds %d and needed %d more",
			r.mem.limit, r.mem.Used(), r.held, n))
	}
	r.held += n
	return nil
}

func (r *Router) uncharge(n int64) {
	r.held -= n
	r.mem.release(n)
}

// stop ends keeping with err (a *stopErr) and drops the cache.
func (r *Router) stop(err error) {
	var s *stopErr
	if !errors.As(err, &s) {
		s = &stopErr{Failed, err.Error(), err}
	}
	if r.status.State == Keeping {
		r.status.State, r.status.Reason, r.status.Err = s.state, s.reason, s.err
	}
	r.dropAll()
}

func (r *Router) dropPending() {
	r.uncharge(r.pendCap)
	r.pend, r.pendCap = nil, 0
}

// dropAll forgets the state. The memory it held is released now, or, if a
// snapshot still reads it, once that snapshot is closed.
func (r *Router) dropAll() {
	r.dropPending()
	r.init, r.peers, r.order, r.views, r.last = nil, nil, nil, nil, nil
	r.attrs, r.labels = pool{}, pool{}
	r.frozen = nil
	if r.snap == nil {
		r.uncharge(r.held)
	}
}

// Release drops the state and returns its memory to the Memory, for a
// session that ended. Later Feeds only count bytes; Snapshot fails.
func (r *Router) Release() {
	r.released = true
	r.dropAll()
	// A snapshot still open keeps its Go memory until closed, unaccounted.
	r.retired = 0
	r.uncharge(r.held)
}

// settle merges the tables back once the open snapshot is closed.
func (r *Router) settle() {
	if r.snap == nil || !r.snap.closed.Load() {
		return
	}
	r.snap = nil
	tabs := r.frozen
	r.frozen = nil
	r.uncharge(r.retired)
	r.retired = 0
	if r.status.State != Keeping || r.released {
		r.uncharge(r.held)
		return
	}
	for _, t := range tabs {
		if t.dead {
			continue
		}
		t.frozen = false
		if err := t.rt.merge(r); err != nil {
			r.stop(err)
			return
		}
	}
	r.attrs.thaw(r)
	r.labels.thaw(r)
}
