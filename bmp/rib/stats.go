package rib

// Stats is a summary of a Router's state.
type Stats struct {
	Peers    int    // peers up
	Routes   int    // routes kept, all tables
	Attrs    int    // distinct attribute sets interned
	Bytes    int64  // bytes held against the Memory
	Messages uint64 // complete messages seen
	Offset   int64  // bytes fed
	Tables   []TableStats
}

// TableStats counts the routes of one RIB of a peer and one AFI/SAFI.
type TableStats struct {
	Peer   PeerHeader
	Family Family
	Routes int
}

// Stats summarises the state, per peer RIB and AFI/SAFI in replay order.
func (r *Router) Stats() Stats {
	r.settle()
	st := Stats{Peers: len(r.order), Attrs: r.attrs.live, Bytes: r.held, Messages: r.msgs, Offset: r.fed}
	for _, p := range r.order {
		for _, v := range p.views {
			for _, t := range v.tables {
				st.Routes += t.routes
				st.Tables = append(st.Tables, TableStats{headerOf(v.key), t.fam, t.routes})
			}
		}
	}
	return st
}
