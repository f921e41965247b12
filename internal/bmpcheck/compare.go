package bmpcheck

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// diffLimit bounds the differences Diff describes.
const diffLimit = 20

// Equal reports whether two states hold the same Initiation, Termination,
// peers with the same Peer Up, routes and ADD-PATH use, and unkeyed tables.
// End-of-RIB marks, message counts and tables without routes are ignored.
func (s *State) Equal(o *State) bool {
	d := differ{limit: 1}
	d.states(s, o)
	return d.total == 0
}

// Diff describes, for a person, how got differs from s: at most diffLimit
// differences, in a stable order, then how many more there are. "missing"
// is in s and not in got, "extra" the reverse. It is empty if s.Equal(got).
func (s *State) Diff(got *State) string {
	d := differ{limit: diffLimit}
	d.states(s, got)
	if d.total > len(d.lines) {
		d.lines = append(d.lines, fmt.Sprintf("... and %d more differences", d.total-len(d.lines)))
	}
	return strings.Join(d.lines, "\n")
}

type differ struct {
	limit int
	total int
	lines []string
}

// full reports whether enough differences were found: the rest are counted
// by table, not walked.
func (d *differ) full() bool { return d.total >= d.limit }

// lineLimit bounds one difference's description.
const lineLimit = 600

func (d *differ) add(format string, args ...any) {
	d.total++
	if len(d.lines) < d.limit {
		line := fmt.Sprintf(format, args...)
		if len(line) > lineLimit {
			line = line[:lineLimit] + "..."
		}
		d.lines = append(d.lines, line)
	}
}

func (d *differ) states(want, got *State) {
	if !tlvsEqual(want.Initiation, got.Initiation) {
		d.add("initiation: want %s, got %s", formatTLVs(want.Initiation), formatTLVs(got.Initiation))
	}
	if want.Terminated != got.Terminated || !tlvsEqual(want.Termination, got.Termination) {
		d.add("termination: want %v %s, got %v %s", want.Terminated, formatTLVs(want.Termination), got.Terminated, formatTLVs(got.Termination))
	}
	for _, p := range sortedPeers(want.Peers) {
		g := got.Peers[p.Key]
		if g == nil {
			d.add("missing peer %s (%d routes)", p.Key, p.RouteCount())
			continue
		}
		d.peers(p, g)
	}
	for _, g := range sortedPeers(got.Peers) {
		if want.Peers[g.Key] == nil {
			d.add("extra peer %s (%d routes)", g.Key, g.RouteCount())
		}
	}
	for _, r := range sortedRefs(want.Unkeyed) {
		if !got.Unkeyed[r] {
			d.add("missing unkeyed %s", r)
		}
	}
	for _, r := range sortedRefs(got.Unkeyed) {
		if !want.Unkeyed[r] {
			d.add("extra unkeyed %s", r)
		}
	}
}

func (d *differ) peers(want, got *Peer) {
	if !want.Up.equal(got.Up) {
		d.add("peer %s: Peer Up differs:%s", want.Key, diffUp(want.Up, got.Up))
	}
	families := sortedFamilies(want.Tables)
	for _, f := range sortedFamilies(got.Tables) {
		if want.Tables[f] == nil {
			families = append(families, f)
		}
	}
	as2 := want.Key.Flags&FlagA != 0 && want.Key.Type != PeerLocRIB
	for _, f := range families {
		d.tables(fmt.Sprintf("peer %s %s", want.Key, f), want.Tables[f], got.Tables[f], as2)
	}
}

func (d *differ) tables(name string, want, got *Table, as2 bool) {
	wr, gr := routesOf(want), routesOf(got)
	if len(wr) == 0 && len(gr) == 0 {
		return
	}
	if want != nil && got != nil && want.AddPath != got.AddPath {
		d.add("%s: add-path want %v, got %v", name, want.AddPath, got.AddPath)
	}
	if n := countDiffs(wr, gr); n == 0 || d.full() {
		// Equal tables, or enough described: no sorting.
		d.total += n
		return
	}
	for _, k := range sortedKeys(wr) {
		r := wr[k]
		g, ok := gr[k]
		switch {
		case !ok:
			d.add("%s: missing %s %s", name, k, formatRoute(r, as2))
		case g != r:
			d.add("%s: %s differs: %s", name, k, diffRoute(r, g, as2))
		}
	}
	for _, k := range sortedKeys(gr) {
		if _, ok := wr[k]; !ok {
			d.add("%s: extra %s %s", name, k, formatRoute(gr[k], as2))
		}
	}
}

// countDiffs is the number of routes of want missing or different in got,
// plus those of got not in want.
func countDiffs(want, got map[RouteKey]Route) int {
	n := 0
	for k, r := range want {
		if g, ok := got[k]; !ok || g != r {
			n++
		}
	}
	if len(got) != len(want)-n {
		for k := range got {
			if _, ok := want[k]; !ok {
				n++
			}
		}
	}
	return n
}

func routesOf(t *Table) map[RouteKey]Route {
	if t == nil {
		return nil
	}
	return t.Routes
}

func formatRoute(r Route, as2 bool) string {
	s := r.Attrs.format(as2)
	if r.Labels != "" {
		s = r.Labels.String() + " " + s
	}
	return s
}

// diffRoute lists what want has and got lacks (-) and the reverse (+).
func diffRoute(want, got Route, as2 bool) string {
	var out []string
	if want.Labels != got.Labels {
		out = append(out, "-"+want.Labels.String(), "+"+got.Labels.String())
	}
	w, g := want.Attrs.List(), got.Attrs.List()
	for _, a := range w {
		if !slices.Contains(g, a) {
			out = append(out, "-"+a.format(as2))
		}
	}
	for _, a := range g {
		if !slices.Contains(w, a) {
			out = append(out, "+"+a.format(as2))
		}
	}
	return strings.Join(out, " ")
}

func diffUp(want, got PeerUp) string {
	var out []string
	if want.LocalAddress != got.LocalAddress || want.LocalPort != got.LocalPort || want.RemotePort != got.RemotePort {
		out = append(out, fmt.Sprintf(" local %s:%d remote port %d, got %s:%d remote port %d",
			want.LocalAddress, want.LocalPort, want.RemotePort, got.LocalAddress, got.LocalPort, got.RemotePort))
	}
	if want.SentOpen != got.SentOpen {
		out = append(out, fmt.Sprintf(" sent OPEN %x, got %x", want.SentOpen, got.SentOpen))
	}
	if want.ReceivedOpen != got.ReceivedOpen {
		out = append(out, fmt.Sprintf(" received OPEN %x, got %x", want.ReceivedOpen, got.ReceivedOpen))
	}
	if !tlvsEqual(want.Info, got.Info) {
		out = append(out, fmt.Sprintf(" info %s, got %s", formatTLVs(want.Info), formatTLVs(got.Info)))
	}
	return strings.Join(out, ";")
}

func formatTLVs(tlvs []TLV) string {
	if tlvs == nil {
		return "none"
	}
	var out []string
	for _, t := range tlvs {
		out = append(out, fmt.Sprintf("%d=%q", t.Type, t.Value))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func sortedPeers(m map[PeerKey]*Peer) []*Peer {
	out := make([]*Peer, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Peer) int { return comparePeerKeys(a.Key, b.Key) })
	return out
}

func comparePeerKeys(a, b PeerKey) int {
	return cmp.Or(
		cmp.Compare(a.Type, b.Type),
		a.Address.Compare(b.Address),
		cmp.Compare(a.Flags, b.Flags),
		slices.Compare(a.Distinguisher[:], b.Distinguisher[:]),
		cmp.Compare(a.AS, b.AS),
		a.BGPID.Compare(b.BGPID),
	)
}

func sortedFamilies(m map[Family]*Table) []Family {
	out := make([]Family, 0, len(m))
	for f := range m {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

func sortedRefs(m map[TableRef]bool) []TableRef {
	out := make([]TableRef, 0, len(m))
	for r := range m {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b TableRef) int {
		return cmp.Or(comparePeerKeys(a.Peer, b.Peer), cmp.Compare(a.Family, b.Family))
	})
	return out
}

func sortedKeys(m map[RouteKey]Route) []RouteKey {
	out := make([]RouteKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, compareRouteKeys)
	return out
}

func compareRouteKeys(a, b RouteKey) int {
	return cmp.Or(
		slices.Compare(a.RD[:], b.RD[:]),
		a.Prefix.Addr().Compare(b.Prefix.Addr()),
		cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()),
		cmp.Compare(a.PathID, b.PathID),
	)
}
