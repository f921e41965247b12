package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Refusals, as they appear in the closing log line's "error" field.
var (
	errNotAllowed   = errors.New("client is not in the listener's allow list")
	errLimit        = errors.New("listener is at max_connections")
	errSpoofed      = errors.New("PROXY header from a source not in accept_proxy_from")
	errNoHeader     = errors.New("trusted proxy sent no PROXY header")
	errHeaderUnread = errors.New("cannot read trusted proxy's PROXY header")
)

// Signatures that start PROXY protocol v1 and v2 headers.
const (
	proxySigV1 = "PROXY "
	proxySigV2 = "\r\n\r\n\x00\r\nQUIT\n"
)

// admit is the gate every accepted connection passes before anything else
// is done for it: the client must be allowed, or a trusted proxy, and the
// listener must be below max_connections. It returns the refusing stage
// and its error, or stageNone; then the caller owns one slot of
// lo.state.active and must release it.
func admit(lo *listenerOpts, client netip.Addr) (stage, error) {
	o := &lo.Listener
	if len(o.Allow) > 0 && !o.Allow.Contains(client) && !o.AcceptProxyFrom.Contains(client) {
		return stageAllow, errNotAllowed
	}
	if o.MaxConnections > 0 {
		if lo.state.active.Add(1) > int64(o.MaxConnections) {
			lo.state.active.Add(-1)
			return stageLimit, errLimit
		}
		return stageNone, nil
	}
	lo.state.active.Add(1)
	return stageNone, nil
}

// inbound is what the client side said before the payload: the addresses
// to put in our own header, and any payload bytes already read, which go
// to the target right after that header.
type inbound struct {
	client, local netip.AddrPort
	pre           []byte
	trusted       bool // sent by a trusted proxy: allow applies to client
}

// readInbound applies the listener's accept_proxy_from policy to a newly
// accepted connection whose socket addresses are client and local.
//
//   - With no accept_proxy_from, nothing is read: leading bytes are
//     payload, whatever they look like.
//   - A trusted source must send a v1 or v2 header within the timeout. Its
//     source and destination replace the socket's (a LOCAL header keeps
//     them); the caller then checks that client against allow.
//   - Any other source may not start with a header signature: that is a
//     spoofing attempt and is refused. Its first bytes are read only until
//     they differ from both signatures, or until the timeout if the client
//     is silent; they are payload.
func readInbound(nc net.Conn, o *listenerOpts, client, local netip.AddrPort) (inbound, error) {
	in := inbound{client: client, local: local}
	if len(o.AcceptProxyFrom) == 0 {
		return in, nil
	}
	timeout := o.ProxyHeaderTimeout
	if err := nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return in, err
	}
	defer nc.SetReadDeadline(time.Time{})

	if !o.AcceptProxyFrom.Contains(client.Addr()) {
		pre, err := readPastSignature(nc)
		in.pre = pre
		return in, err
	}

	in.trusted = true
	br := bufio.NewReaderSize(nc, 512)
	h, err := proxyproto.Read(br)
	if err != nil {
		if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
			return in, errNoHeader
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return in, fmt.Errorf("%w: none complete within %s", errHeaderUnread, timeout)
		}
		return in, fmt.Errorf("%w: %w", errHeaderUnread, err)
	}
	if h.Command.IsProxy() {
		src, dst, ok := h.TCPAddrs()
		if !ok {
			return in, fmt.Errorf("%w: not a TCP header (%v)", errHeaderUnread, h.TransportProtocol)
		}
		sa, da := src.AddrPort(), dst.AddrPort()
		in.client = netip.AddrPortFrom(sa.Addr().Unmap(), sa.Port())
		in.local = netip.AddrPortFrom(da.Addr().Unmap(), da.Port())
	}
	if n := br.Buffered(); n > 0 {
		in.pre, _ = br.Peek(n)
		in.pre = bytes.Clone(in.pre)
	}
	return in, nil
}

// readPastSignature reads from an untrusted client until its bytes can no
// longer be the start of a PROXY header, and returns them. It returns
// errSpoofed if they are a whole signature. A silent client (deadline) or
// EOF ends the reading without error.
func readPastSignature(nc net.Conn) ([]byte, error) {
	buf := make([]byte, len(proxySigV2))
	n := 0
	for n < len(buf) {
		m, err := nc.Read(buf[n:])
		n += m
		got := string(buf[:n])
		if strings.HasPrefix(got, proxySigV1) || got == proxySigV2 {
			return buf[:n], errSpoofed
		}
		maybe := strings.HasPrefix(proxySigV1, got) || strings.HasPrefix(proxySigV2, got)
		if n > 0 && !maybe {
			return buf[:n], nil
		}
		if err != nil {
			// A silent client (deadline), EOF or a reset: what was read
			// is payload, and the pumps see the rest.
			return buf[:n], nil
		}
	}
	return buf[:n], nil
}
