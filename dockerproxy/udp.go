package dockerproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// UDP forwarding, as docker-proxy does it.
const (
	udpIdleTimeout = 90 * time.Second // a flow quiet this long is closed
	udpBufferSize  = 64 << 10         // the largest datagram, and then some
	// udpDropLogEvery is the least time between two lines about datagrams
	// dropped because no PROXY header could carry their addresses.
	udpDropLogEvery = 10 * time.Second
)

// udpProxy forwards datagrams between clients and one container address.
// Each client address gets a flow: a connected socket towards the
// container, whose replies go back to the client from the address the
// client sent to. The serve loop owns the flow table's lifecycle; each
// flow's reply goroutine ends when its socket closes.
type udpProxy struct {
	conn   *net.UDPConn
	target netip.AddrPort
	pp     conf.ProxyProtocol // v2 or none
	log    zerolog.Logger
	idle   time.Duration
	// dropLogEvery is the least time between two "udp datagrams dropped"
	// lines; each line counts the drops since the one before.
	dropLogEvery time.Duration

	// unsent counts the datagrams dropped because no PROXY header could
	// carry their addresses. The serve loop writes it.
	unsent atomic.Int64

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow
	wg    sync.WaitGroup
}

type udpFlow struct {
	client, local netip.AddrPort // local: where the client sent to
	up            *net.UDPConn
	// header precedes every datagram to the container; nil for none. When
	// headerErr is set no header can carry the pair, and every datagram
	// of the flow is dropped and counted in unsent.
	header     []byte
	headerErr  error
	start      time.Time
	last       atomic.Int64 // UnixNano of the last datagram either way
	sent, recv atomic.Int64 // payload bytes client → container, back
	unsent     atomic.Int64 // datagrams dropped for want of a header
	closing    atomic.Bool  // set when the proxy is stopping
}

// newUDPProxy returns a proxy from conn to target with docker-proxy's
// idle timeout and the default drop-log interval.
func newUDPProxy(conn *net.UDPConn, target netip.AddrPort, pp conf.ProxyProtocol, log zerolog.Logger) *udpProxy {
	return &udpProxy{conn: conn, target: target, pp: pp, log: log, idle: udpIdleTimeout,
		dropLogEvery: udpDropLogEvery, flows: map[netip.AddrPort]*udpFlow{}}
}

func runUDP(ctx context.Context, env Env, inv Invocation, pp conf.ProxyProtocol, log zerolog.Logger, st *status) error {
	if pp != conf.ProxyV2 && pp != conf.ProxyNone {
		return fmt.Errorf("proxy_protocol %s has no UDP form (want v2 or none)", pp)
	}
	conn, err := listenUDP(ctx, env, inv)
	if err != nil {
		return err
	}
	p := newUDPProxy(conn, inv.Container, pp, log)
	st.report(nil)
	log.Info().Stringer("addr", conn.LocalAddr()).Msg("listening")
	return p.serve(ctx)
}

func listenUDP(ctx context.Context, env Env, inv Invocation) (*net.UDPConn, error) {
	var pc net.PacketConn
	if inv.UseListenFD {
		if env.ListenFD == nil {
			return nil, errors.New("-use-listen-fd: fd 4 is not open")
		}
		defer env.ListenFD.Close()
		var err error
		if pc, err = net.FilePacketConn(env.ListenFD); err != nil {
			return nil, fmt.Errorf("-use-listen-fd: fd 4: %w", err)
		}
	} else {
		// dockerd starts another proxy for the IPv4 side of the same
		// port: an IPv6 socket is IPv6-only.
		var err error
		if pc, err = socket.ListenPacketSingleStack(ctx, inv.Host); err != nil {
			return nil, err
		}
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("-use-listen-fd: fd 4 is not a UDP socket")
	}
	if err := recvPktInfo(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// recvPktInfo asks the kernel for each datagram's destination address, so
// that replies leave from it even on a wildcard socket.
func recvPktInfo(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	v6 := c.LocalAddr().(*net.UDPAddr).IP.To4() == nil
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt PKTINFO: %w", serr)
	}
	return nil
}

// serve reads datagrams until ctx is done, then closes every flow and
// waits for their goroutines.
func (p *udpProxy) serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.conn.Close() })
	defer stop()
	drops := &dropLog{every: p.dropLogEvery}
	defer func() { drops.flush(p.log, p.unsent.Load()) }() // after the flows' closing lines
	defer p.closeAll()
	buf := make([]byte, udpBufferSize)
	out := make([]byte, 0, udpBufferSize+maxV2Header)
	oob := make([]byte, 128)
	for {
		n, oobn, _, client, err := p.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			p.log.Warn().Err(err).Msg("udp read failed")
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		f, err := p.flow(client, destination(oob[:oobn], p.conn))
		if err != nil {
			p.log.Warn().Err(err).Stringer("client", client).Msg("udp flow not opened")
			continue
		}
		if f.headerErr != nil {
			f.unsent.Add(1)
			drops.add(p.log, p.unsent.Add(1), f, f.headerErr)
			continue // never sent with a LOCAL header, nor none
		}
		msg := buf[:n]
		if f.header != nil {
			msg = append(append(out[:0], f.header...), msg...)
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := f.up.Write(msg); err == nil {
			f.sent.Add(int64(n))
		}
	}
}

// destination returns the address a datagram was sent to, from its
// PKTINFO, or the socket's own address.
func destination(oob []byte, c *net.UDPConn) netip.AddrPort {
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return local
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			// struct in_pktinfo: ifindex, spec_dst, addr (the header's destination)
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[8:12])), local.Port())
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 16:
			// struct in6_pktinfo: addr, ifindex
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[:16])).Unmap(), local.Port())
		}
	}
	return local
}

// flow returns client's flow, opening it on its first datagram.
func (p *udpProxy) flow(client, local netip.AddrPort) (*udpFlow, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.flows[client]; ok {
		return f, nil
	}
	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.target))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", p.target, err)
	}
	f := &udpFlow{client: client, local: local, up: up, start: time.Now()}
	if p.pp == conf.ProxyV2 {
		f.header, f.headerErr = udpHeader(client, local)
	}
	f.last.Store(time.Now().UnixNano())
	p.flows[client] = f
	p.wg.Add(1)
	go p.replies(f)
	return f, nil
}

// replies copies the container's datagrams back to the client, from the
// address the client sent to, until the flow has been idle for p.idle or
// the proxy stops.
func (p *udpProxy) replies(f *udpFlow) {
	defer p.wg.Done()
	reason := "idle"
	defer func() { p.end(f, reason) }()
	buf := make([]byte, udpBufferSize)
	oob := pktInfoFrom(f.local.Addr())
	for {
		f.up.SetReadDeadline(time.Unix(0, f.last.Load()).Add(p.idle))
		n, err := f.up.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, f.last.Load())) >= p.idle {
					return
				}
				continue // a datagram from the client moved the deadline
			}
			if f.closing.Load() {
				reason = "shutdown"
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an ICMP error for an earlier datagram: the container may come back
			}
			reason = "container error"
			return
		}
		f.last.Store(time.Now().UnixNano())
		if _, _, err := p.conn.WriteMsgUDPAddrPort(buf[:n], oob, f.client); err == nil {
			f.recv.Add(int64(n))
		}
	}
}

// pktInfoFrom builds the control message that sends a datagram from a.
func pktInfoFrom(a netip.Addr) []byte {
	if a.IsUnspecified() {
		return nil
	}
	if a.Is4() {
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: a.As4()})
	}
	return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: a.As16()})
}

// end removes f and writes its closing line.
func (p *udpProxy) end(f *udpFlow, reason string) {
	p.mu.Lock()
	if p.flows[f.client] == f {
		delete(p.flows, f.client)
	}
	p.mu.Unlock()
	f.up.Close()
	p.log.Info().
		Stringer("client", f.client).
		Stringer("local", f.local).
		Stringer("target", p.target).
		Int64("bytes_from_client", f.sent.Load()).
		Int64("bytes_to_client", f.recv.Load()).
		Int64("datagrams_dropped", f.unsent.Load()).
		Stringer("duration", time.Since(f.start)).
		Str("reason", reason).
		Msg("udp flow closed")
}

// closeAll ends every flow and waits for their goroutines.
func (p *udpProxy) closeAll() {
	p.mu.Lock()
	for _, f := range p.flows {
		f.closing.Store(true)
		f.up.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// maxV2Header is the length of the longest header udpHeader returns: v2
// for IPv6, with no TLVs.
const maxV2Header = 16 + 36

// udpHeader returns the PROXY v2 header for datagrams from client to
// local. Both ends are unmapped and lose their zones, which the header
// has no room for. An invalid address or a pair of two families is an
// error: such a datagram must not go out with a LOCAL header that hides
// the client.
func udpHeader(client, local netip.AddrPort) ([]byte, error) {
	src := netip.AddrPortFrom(client.Addr().Unmap().WithZone(""), client.Port())
	dst := netip.AddrPortFrom(local.Addr().Unmap().WithZone(""), local.Port())
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return nil, fmt.Errorf("cannot build PROXY header: invalid address in %s -> %s", client, local)
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("cannot build PROXY header: mixed families %s -> %s", src, dst)
	}
	want := proxyproto.UDPv6
	if src.Addr().Is4() {
		want = proxyproto.UDPv4
	}
	h := proxyproto.HeaderProxyFromAddrs(2, net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
	if h.Command != proxyproto.PROXY || h.TransportProtocol != want {
		return nil, fmt.Errorf("cannot build PROXY header: %s -> %s would be sent as %v/%v", src, dst, h.Command, h.TransportProtocol)
	}
	b, err := h.Format()
	if err != nil {
		return nil, fmt.Errorf("cannot build PROXY header: %s -> %s: %w", src, dst, err)
	}
	return b, nil
}

// dropLog writes at most one line per every about datagrams dropped for
// want of a header, each with the count since the line before. The serve
// loop owns it.
type dropLog struct {
	every  time.Duration
	last   time.Time // when the last line was written
	logged int64     // the total at that line
}

// add notes a drop that brought the total to total, and writes a line if
// the last is at least every old.
func (d *dropLog) add(log zerolog.Logger, total int64, f *udpFlow, err error) {
	now := time.Now()
	if !d.last.IsZero() && now.Sub(d.last) < d.every {
		return
	}
	log.Warn().Err(err).
		Stringer("client", f.client).
		Stringer("local", f.local).
		Int64("dropped", total-d.logged).
		Int64("dropped_total", total).
		Stringer("interval", d.every).
		Msg("udp datagrams dropped: no PROXY header can carry their addresses")
	d.last, d.logged = now, total
}

// flush writes the drops no line has counted yet, when the proxy stops.
func (d *dropLog) flush(log zerolog.Logger, total int64) {
	if total == d.logged {
		return
	}
	log.Warn().
		Int64("dropped", total-d.logged).
		Int64("dropped_total", total).
		Msg("udp datagrams dropped: no PROXY header can carry their addresses")
	d.logged = total
}
