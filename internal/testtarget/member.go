package testtarget

import (
	"bufio"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Member is a pool member on a fixed loopback address that keeps each
// router's sessions by the router address its PROXY v2 header carries,
// and counts health checks (a LOCAL header and nothing else) apart. It
// can be stopped and started again on the same address: a collector that
// dies and comes back. Cleanup stops it and waits for its goroutines.
type Member struct {
	t    testing.TB
	addr string
	wg   sync.WaitGroup

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]bool
	sessions map[netip.Addr][]*memberSession // by router, oldest first
	probes   int
}

type memberSession struct {
	bytes []byte
	open  bool
}

// NewMember starts a Member on addr ("127.0.0.1:0" for any port).
func NewMember(t testing.TB, addr string) *Member {
	t.Helper()
	m := &Member{t: t, addr: addr, conns: map[net.Conn]bool{}, sessions: map[netip.Addr][]*memberSession{}}
	m.Start()
	t.Cleanup(func() { m.Stop(); m.wg.Wait() })
	return m
}

// Addr is the member's address, the same across restarts.
func (m *Member) Addr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.addr
}

// Start listens on the member's address again.
func (m *Member) Start() {
	m.t.Helper()
	ln, err := net.Listen("tcp", m.Addr())
	if err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.ln, m.addr = ln, ln.Addr().String()
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			m.mu.Lock()
			m.conns[nc] = true
			m.mu.Unlock()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.serve(nc)
			}()
		}
	}()
}

func (m *Member) serve(nc net.Conn) {
	defer func() {
		m.mu.Lock()
		delete(m.conns, nc)
		m.mu.Unlock()
		nc.Close()
	}()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(nc, 64<<10)
	h, err := proxyproto.Read(br)
	if err != nil {
		return
	}
	nc.SetReadDeadline(time.Time{})
	if h.Command == proxyproto.LOCAL {
		m.mu.Lock()
		m.probes++
		m.mu.Unlock()
		return
	}
	src, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok {
		return
	}
	router := src.AddrPort().Addr().Unmap()
	s := &memberSession{open: true}
	m.mu.Lock()
	m.sessions[router] = append(m.sessions[router], s)
	m.mu.Unlock()
	buf := make([]byte, 64<<10)
	for {
		n, err := br.Read(buf)
		m.mu.Lock()
		s.bytes = append(s.bytes, buf[:n]...)
		if err != nil {
			s.open = false
		}
		m.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Stop closes the listener and every connection: dials are refused
// until Start.
func (m *Member) Stop() {
	m.mu.Lock()
	ln := m.ln
	m.ln = nil
	for nc := range m.conns {
		nc.Close()
	}
	m.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// Open returns the routers with a session open here now, sorted.
func (m *Member) Open() []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Addr
	for r, ss := range m.sessions {
		if len(ss) > 0 && ss[len(ss)-1].open {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Count is how many sessions router had here.
func (m *Member) Count(router netip.Addr) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions[router])
}

// Latest returns the bytes of router's latest session here, and whether
// it is open.
func (m *Member) Latest(router netip.Addr) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ss := m.sessions[router]
	if len(ss) == 0 {
		return nil, false
	}
	s := ss[len(ss)-1]
	return slices.Clone(s.bytes), s.open
}

// Probes counts the health checks the member got.
func (m *Member) Probes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.probes
}
