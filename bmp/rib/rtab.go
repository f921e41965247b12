package rib

// rtab is one table's routes, whatever its key type. Every method runs on
// the feeding goroutine except those of the frozen view it hands out.
type rtab interface {
	// announce inserts every NLRI of b with attribute index attr; at is
	// b's offset in the message, for errors.
	announce(r *Router, t *table, b []byte, attr uint32, at int) error
	// withdraw removes every NLRI of b.
	withdraw(r *Router, t *table, b []byte, at int) error
	// freeze makes the current routes read-only: later writes go to a
	// delta until merge.
	freeze() frozen
	// merge folds the delta back; the frozen view must be out of use.
	merge(r *Router) error
	// release drops every live route's references.
	release(r *Router)
	// bytes is the memory the table holds, delta included.
	bytes() int64
	// each calls fn for every live route, for tests and Stats.
	each(fn func(n *nlri, attr, lbl uint32))
}

// frozen is a read-only view of a table's routes as of a freeze. Its
// methods may run on any goroutine while the table is fed.
type frozen interface {
	size() int // slots
	// attr is slot i's attribute index, 0 for an empty slot.
	attr(i int) uint32
	// route fills n (label excepted) from slot i and returns its attribute
	// index (0: empty slot) and label word.
	route(i int, n *nlri) (attr, lbl uint32)
}

// ribT is a table of routes keyed by K: a base htab and, while a snapshot
// holds the base, a delta of the writes since (tombstone for withdrawn
// routes). The live routes are the delta over the base.
type ribT[K key[K]] struct {
	base   htab[K]
	delta  *htab[K]
	frozen bool
}

func newRibT[K key[K]](labeled bool) *ribT[K] {
	return &ribT[K]{base: newHtab[K](labeled)}
}

// reserve makes room in h for one more key, charging r for the grown
// arrays before they are allocated.
func reserve[K key[K]](r *Router, h *htab[K]) error {
	if !h.full() {
		return nil
	}
	size := h.grownSize()
	if err := r.charge(int64(size) * h.slotBytes()); err != nil {
		return err
	}
	old := h.bytes()
	h.grow(size)
	r.uncharge(old)
	return nil
}

func (t *ribT[K]) get(k K) (v, l uint32) {
	if t.delta != nil {
		if i := t.delta.find(k); i >= 0 {
			v = t.delta.slots[i].v
			if v == tombstone {
				return 0, 0
			}
			if t.delta.lbl != nil {
				l = t.delta.lbl[i]
			}
			return v, l
		}
	}
	if i := t.base.find(k); i >= 0 {
		v = t.base.slots[i].v
		if t.base.lbl != nil {
			l = t.base.lbl[i]
		}
	}
	return v, l
}

// set makes (v, l) the live value of k and returns the previous one.
func (t *ribT[K]) set(r *Router, k K, v, l uint32) (ov, ol uint32, err error) {
	if !t.frozen {
		if t.base.find(k) < 0 {
			if err := reserve(r, &t.base); err != nil {
				return 0, 0, err
			}
		}
		ov, ol = t.base.put(k, v, l)
		return ov, ol, nil
	}
	if t.delta == nil {
		d := newHtab[K](t.base.lbl != nil)
		t.delta = &d
	}
	ov, ol = t.get(k)
	if t.delta.find(k) < 0 {
		if err := reserve(r, t.delta); err != nil {
			return 0, 0, err
		}
	}
	t.delta.put(k, v, l)
	return ov, ol, nil
}

// unset withdraws k and returns its previous live value.
func (t *ribT[K]) unset(r *Router, k K) (ov, ol uint32, err error) {
	if !t.frozen {
		ov, ol = t.base.del(k)
		return ov, ol, nil
	}
	ov, ol = t.get(k)
	if ov == 0 {
		return 0, 0, nil
	}
	if t.base.find(k) < 0 {
		t.delta.del(k) // added since the freeze: forget it
		return ov, ol, nil
	}
	if t.delta == nil {
		d := newHtab[K](t.base.lbl != nil)
		t.delta = &d
	}
	if t.delta.find(k) < 0 {
		if err := reserve(r, t.delta); err != nil {
			return 0, 0, err
		}
	}
	t.delta.put(k, tombstone, 0)
	return ov, ol, nil
}

func (t *ribT[K]) announce(r *Router, tb *table, b []byte, attr uint32, at int) error {
	n := &r.scratch
	var z K
	for off := 0; off < len(b); {
		used, why := parseNLRI(b[off:], tb.kind, tb.addPath, false, tb.multiLabel, n)
		if why != "" {
			return r.malformed(at+off, "%s NLRI: %s", tb.fam, why)
		}
		var lbl uint32
		if n.label != nil {
			var err error
			if lbl, err = r.labelWord(n.label); err != nil {
				return err
			}
		}
		ov, ol, err := t.set(r, z.from(n), attr, lbl)
		if err != nil {
			return err
		}
		r.attrs.ref(attr)
		if ov != 0 {
			r.attrs.unref(r, ov)
			r.unrefLabel(ol)
		} else {
			tb.routes++
		}
		off += used
	}
	return nil
}

func (t *ribT[K]) withdraw(r *Router, tb *table, b []byte, at int) error {
	n := &r.scratch
	var z K
	for off := 0; off < len(b); {
		used, why := parseNLRI(b[off:], tb.kind, tb.addPath, true, tb.multiLabel, n)
		if why != "" {
			return r.malformed(at+off, "%s withdrawn NLRI: %s", tb.fam, why)
		}
		ov, ol, err := t.unset(r, z.from(n))
		if err != nil {
			return err
		}
		if ov != 0 {
			r.attrs.unref(r, ov)
			r.unrefLabel(ol)
			tb.routes--
		}
		off += used
	}
	return nil
}

func (t *ribT[K]) freeze() frozen {
	t.frozen = true
	return frozenT[K]{slots: t.base.slots, lbl: t.base.lbl}
}

func (t *ribT[K]) merge(r *Router) error {
	t.frozen = false
	d := t.delta
	if d == nil {
		return nil
	}
	t.delta = nil
	defer r.uncharge(d.bytes())
	for i := range d.slots {
		s := &d.slots[i]
		switch s.v {
		case 0:
		case tombstone:
			t.base.del(s.k)
		default:
			if t.base.find(s.k) < 0 {
				if err := reserve(r, &t.base); err != nil {
					return err
				}
			}
			var l uint32
			if d.lbl != nil {
				l = d.lbl[i]
			}
			t.base.put(s.k, s.v, l)
		}
	}
	return nil
}

func (t *ribT[K]) release(r *Router) {
	t.each(func(_ *nlri, attr, lbl uint32) {
		r.attrs.unref(r, attr)
		r.unrefLabel(lbl)
	})
}

func (t *ribT[K]) bytes() int64 {
	n := t.base.bytes()
	if t.delta != nil {
		n += t.delta.bytes()
	}
	return n
}

func (t *ribT[K]) each(fn func(n *nlri, attr, lbl uint32)) {
	var n nlri
	visit := func(h *htab[K], i int) {
		var l uint32
		if h.lbl != nil {
			l = h.lbl[i]
		}
		n = nlri{}
		h.slots[i].k.fill(&n)
		fn(&n, h.slots[i].v, l)
	}
	for i := range t.base.slots {
		s := &t.base.slots[i]
		if s.v == 0 || (t.delta != nil && t.delta.find(s.k) >= 0) {
			continue
		}
		visit(&t.base, i)
	}
	if t.delta != nil {
		for i := range t.delta.slots {
			if v := t.delta.slots[i].v; v != 0 && v != tombstone {
				visit(t.delta, i)
			}
		}
	}
}

// frozenT is the frozen view of a ribT: the base arrays as of the freeze,
// which the feeding goroutine leaves untouched until merge.
type frozenT[K key[K]] struct {
	slots []slot[K]
	lbl   []uint32
}

func (f frozenT[K]) size() int         { return len(f.slots) }
func (f frozenT[K]) attr(i int) uint32 { return f.slots[i].v }

func (f frozenT[K]) route(i int, n *nlri) (attr, lbl uint32) {
	s := &f.slots[i]
	if s.v == 0 {
		return 0, 0
	}
	s.k.fill(n)
	if f.lbl != nil {
		lbl = f.lbl[i]
	}
	return s.v, lbl
}
