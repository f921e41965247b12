package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"syscall"
	"time"
)

// SnapshotFormat is the version of Snapshot this binary writes and reads.
// A change that an older binary would misread must increase it.
const SnapshotFormat = 2

// Snapshot describes a frozen server for its successor. Descriptors are
// indexes into FDs. It is plain data, encoded as JSON between processes.
type Snapshot struct {
	Format    int                       `json:"format"` // SnapshotFormat
	Listeners []SnapshotListener        `json:"listeners"`
	Conns     []SnapshotConn            `json:"conns"`
	States    map[string]SnapshotCounts `json:"listener_counters"`
	Server    Counters                  `json:"server_counters"`
	// Closed are the recently closed BMP sessions, oldest first.
	Closed []RouterStatus `json:"closed_routers"`
	// LastEnd is when each router's last session ended.
	LastEnd map[netip.Addr]time.Time `json:"last_session_end"`
	NextID  uint64                   `json:"next_conn_id"`
	// Drained are the drained members of each pool listener's pool: a
	// drain outlives an upgrade.
	Drained map[string][]netip.AddrPort `json:"pool_drained,omitempty"`
	// Extra are listening sockets the caller adds, such as the admin
	// listener; Run neither makes nor reads them.
	Extra []SnapshotListener `json:"extra_listeners,omitempty"`
	// FDs are the descriptors: the live ones of the frozen server in the
	// predecessor, the inherited ones in the successor.
	FDs []int `json:"-"`
	// owned are the files made for the snapshot (fan-out connections'
	// memfds), which the predecessor closes once the handoff is over.
	owned []*os.File
}

// CloseOwned closes the files made for the snapshot, once the successor
// has its copies or the handoff failed.
func (snap *Snapshot) CloseOwned() {
	for _, f := range snap.owned {
		f.Close()
	}
	snap.owned = nil
}

// SnapshotListener is one listening socket.
type SnapshotListener struct {
	Name string         `json:"name"`
	Addr netip.AddrPort `json:"addr"`
	FD   int            `json:"fd"`
}

// SnapshotConn is one connection pair and its state.
type SnapshotConn struct {
	ID       uint64         `json:"id"`
	Listener string         `json:"listener"`
	Via      netip.AddrPort `json:"via"`
	Client   netip.AddrPort `json:"client"`
	Local    netip.AddrPort `json:"local"`
	Target   string         `json:"target"`
	Upstream string         `json:"upstream"`
	Start    time.Time      `json:"start"`
	BMP      bool           `json:"bmp"`
	Session  bool           `json:"session"`
	SysName  string         `json:"sys_name,omitempty"`
	SysDescr string         `json:"sys_descr,omitempty"`
	Term     string         `json:"termination_reason,omitempty"`
	// Up and Down are the bytes delivered each way: spliced, copied.
	Up   [2]int64 `json:"up"`
	Down [2]int64 `json:"down"`
	// Ended says which directions have ended (up, down): their FIN was
	// already passed on.
	Ended    [2]bool `json:"ended"`
	ClientFD int     `json:"client_fd"`
	TargetFD int     `json:"target_fd"` // -1 for a fan-out connection
	// Fanout is set for a fan-out connection, which has legs instead of
	// a target socket; Down is then what its primary leg sent back.
	Fanout *SnapshotFanout `json:"fanout,omitempty"`
}

// SnapshotCounts are one listener name's counters of ended connections.
type SnapshotCounts struct {
	Accepted           uint64            `json:"accepted"`
	ConnectFailures    uint64            `json:"connect_failures"`
	Refused            map[string]uint64 `json:"refused"`
	FromClient         int64             `json:"bytes_from_client"`
	ToClient           int64             `json:"bytes_to_client"`
	Spliced            int64             `json:"bytes_spliced"`
	Copied             int64             `json:"bytes_copied"`
	ResyncStopped      uint64            `json:"resync_stopped,omitempty"`
	RouterDials        uint64            `json:"router_dials,omitempty"`
	RouterDialFailures uint64            `json:"router_dial_failures,omitempty"`
	Legs               []LegStats        `json:"legs,omitempty"`
}

// snapshot describes the frozen server. The descriptors are the live
// sockets' own; they stay valid because nothing runs until thaw or
// release. It fails only for a fan-out connection's memfd.
func (s *Server) snapshot() (*Snapshot, error) {
	snap := &Snapshot{
		Format: SnapshotFormat,
		States: map[string]SnapshotCounts{},
		NextID: s.nextID.Load(),
		Server: s.stats.saved(),
	}
	s.mu.Lock()
	for name, lp := range s.pools {
		for _, m := range lp.pool.Members() {
			if m.Drained {
				if snap.Drained == nil {
					snap.Drained = map[string][]netip.AddrPort{}
				}
				snap.Drained[name] = append(snap.Drained[name], m.Addr)
			}
		}
	}
	s.mu.Unlock()
	addrs := make([]netip.AddrPort, 0, len(s.listeners))
	for a := range s.listeners {
		addrs = append(addrs, a)
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].String() < addrs[j].String() })
	for _, a := range addrs {
		l := s.listeners[a]
		sc, ok := l.ln.(syscall.Conn)
		if !ok {
			continue // not a socket of ours; the successor opens its own
		}
		snap.Listeners = append(snap.Listeners, SnapshotListener{Name: l.opts.Load().Name, Addr: a, FD: snap.addFD(sc)})
	}

	s.mu.Lock()
	for name, st := range s.states {
		snap.States[name] = st.saved()
	}
	s.mu.Unlock()
	conns := s.tracked()
	sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
	for _, c := range conns {
		sc, err := c.snapshot(snap)
		if err != nil {
			snap.CloseOwned()
			return nil, fmt.Errorf("freeze: %w", err)
		}
		snap.Conns = append(snap.Conns, sc)
	}

	snap.Closed, snap.LastEnd = s.routers.saved()
	return snap, nil
}

// addFD adds sc's descriptor to FDs and returns its index; -1 is added if
// sc has none, and the successor then reports it.
func (snap *Snapshot) addFD(sc syscall.Conn) int {
	fd := -1
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(f uintptr) { fd = int(f) })
	}
	snap.FDs = append(snap.FDs, fd)
	return len(snap.FDs) - 1
}

// file returns descriptor i of FDs as a file, named for errors.
func (snap *Snapshot) file(i int, name string) (*os.File, error) {
	if i < 0 || i >= len(snap.FDs) || snap.FDs[i] < 0 {
		return nil, fmt.Errorf("%s: no descriptor %d", name, i)
	}
	return os.NewFile(uintptr(snap.FDs[i]), name), nil
}

// listener makes a listener of an inherited listening socket.
func (snap *Snapshot) listener(sl SnapshotListener) (net.Listener, error) {
	f, err := snap.file(sl.FD, "listener "+sl.Addr.String())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", sl.Addr, err)
	}
	return ln, nil
}

// AddExtra adds ln, a listening socket of the caller's such as the admin
// listener, under name. It reports false, and adds nothing, if ln is not
// a socket.
func (snap *Snapshot) AddExtra(name string, ln net.Listener) bool {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return false
	}
	sl := SnapshotListener{Name: name, Addr: addrPort(ln.Addr()), FD: snap.addFD(sc)}
	if snap.FDs[sl.FD] < 0 {
		snap.FDs = snap.FDs[:sl.FD]
		return false
	}
	snap.Extra = append(snap.Extra, sl)
	return true
}

// TakeExtra returns the extra listening socket added under name that
// serves addr (the same address, or the same IP for port 0), and removes
// it from the snapshot. It returns nil and no error if there is none.
func (snap *Snapshot) TakeExtra(name string, addr netip.AddrPort) (net.Listener, error) {
	for i, sl := range snap.Extra {
		if sl.Name == name && serves(addr, sl.Addr) {
			snap.Extra = append(snap.Extra[:i], snap.Extra[i+1:]...)
			return snap.listener(sl)
		}
	}
	return nil, nil
}

// CloseExtra closes the extra sockets nothing took.
func (snap *Snapshot) CloseExtra() {
	for _, sl := range snap.Extra {
		if f, err := snap.file(sl.FD, sl.Name); err == nil {
			f.Close()
		}
	}
	snap.Extra = nil
}
