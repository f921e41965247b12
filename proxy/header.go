package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/bmpproxy/bmpproxy/conf"
	proxyproto "github.com/pires/go-proxyproto"
)

// ErrHeader reports a connection whose addresses cannot be expressed in a
// PROXY header. Such a connection is refused rather than sent a LOCAL or
// UNSPEC header that would hide the client.
var ErrHeader = errors.New("cannot build PROXY header")

// proxyHeader returns the header announcing a connection from client to
// local, the address the client connected to. IPv4 clients on a dual-stack
// socket arrive as IPv4-mapped IPv6 addresses; both ends are unmapped so
// that v2 carries them as AF_INET (family 0x11, 12 address bytes) and v1 as
// TCP4. IPv6 pairs use AF_INET6 (0x21, 36 bytes) and TCP6. Zones are
// dropped: the header has no room for them. ProxyNone returns nil.
func proxyHeader(mode conf.ProxyProtocol, client, local netip.AddrPort) ([]byte, error) {
	var version byte
	switch mode {
	case conf.ProxyNone, conf.ProxyTransparent:
		return nil, nil
	case conf.ProxyV1:
		version = 1
	case conf.ProxyV2:
		version = 2
	default:
		return nil, fmt.Errorf("%w: unknown mode %q", ErrHeader, mode)
	}
	src := netip.AddrPortFrom(client.Addr().Unmap().WithZone(""), client.Port())
	dst := netip.AddrPortFrom(local.Addr().Unmap().WithZone(""), local.Port())
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return nil, fmt.Errorf("%w: invalid address in %s -> %s", ErrHeader, client, local)
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("%w: mixed families %s -> %s", ErrHeader, src, dst)
	}
	want := proxyproto.TCPv6
	if src.Addr().Is4() {
		want = proxyproto.TCPv4
	}
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	// HeaderProxyFromAddrs falls back to LOCAL/UNSPEC for pairs it cannot
	// express; never send that by accident.
	if h.Command != proxyproto.PROXY || h.TransportProtocol != want {
		return nil, fmt.Errorf("%w: %s -> %s would be sent as %v/%v", ErrHeader, src, dst, h.Command, h.TransportProtocol)
	}
	b, err := h.Format()
	if err != nil {
		return nil, fmt.Errorf("%w: %s -> %s: %w", ErrHeader, src, dst, err)
	}
	return b, nil
}
