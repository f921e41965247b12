// Package bmp is a small, bounded parser for the BGP Monitoring Protocol
// (RFC 7854): the common header, Initiation and Termination messages, and
// message framing over a byte stream.
//
// Every function here works within the bytes it is given and never allocates
// a buffer sized from a length field before that length has been checked
// against a caller-chosen maximum. It imports only the standard library.
package bmp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// HeaderLen is the size of the common header (RFC 7854 §4.1): version (1
// byte), message length (4 bytes, big-endian, including the header) and
// message type (1 byte).
const HeaderLen = 6

// Version is the only BMP version this package accepts.
const Version = 3

// MaxMessageLen is the default upper bound for one message, 1 MiB. It is used
// wherever a max argument is zero.
//
// The largest message a conforming sender produces is far smaller: a BGP
// message is at most 65535 bytes even with extended messages (RFC 8654), a
// Route Monitoring or Route Mirroring message wraps one such PDU in a 42-byte
// per-peer header plus a few TLVs, and a Peer Up carries two OPENs (at most
// 4096 bytes each) plus information TLVs of at most 65535 bytes each. 1 MiB
// leaves room for several such TLVs while keeping a per-connection buffer
// small enough to hold for thousands of connections.
const MaxMessageLen = 1 << 20

// Type is a BMP message type (RFC 7854 §4.1).
type Type uint8

// Message types defined by RFC 7854. They are the only ones ParseHeader
// accepts.
const (
	TypeRouteMonitoring  Type = 0
	TypeStatisticsReport Type = 1
	TypePeerDown         Type = 2
	TypePeerUp           Type = 3
	TypeInitiation       Type = 4
	TypeTermination      Type = 5
	TypeRouteMirroring   Type = 6
)

// String returns the lower-case, hyphenated name of t, or "type-N" for a type
// this package does not know.
func (t Type) String() string {
	switch t {
	case TypeRouteMonitoring:
		return "route-monitoring"
	case TypeStatisticsReport:
		return "statistics-report"
	case TypePeerDown:
		return "peer-down"
	case TypePeerUp:
		return "peer-up"
	case TypeInitiation:
		return "initiation"
	case TypeTermination:
		return "termination"
	case TypeRouteMirroring:
		return "route-mirroring"
	}
	return "type-" + strconv.Itoa(int(t))
}

// Known reports whether t is one of the types defined by RFC 7854.
func (t Type) Known() bool { return t <= TypeRouteMirroring }

// Sentinel errors. Every parse error returned by this package wraps exactly
// one of them, and its message names the offending value. Reader.Next's
// end-of-stream and read errors are the only other errors.
var (
	ErrShort       = errors.New("bmp: short input")
	ErrVersion     = errors.New("bmp: unsupported version")
	ErrLength      = errors.New("bmp: invalid message length")
	ErrType        = errors.New("bmp: unknown message type")
	ErrMessageType = errors.New("bmp: unexpected message type")
	ErrTLV         = errors.New("bmp: malformed TLV")
)

// Header is a decoded common header. A Header returned without error by
// ParseHeader has Version == 3, HeaderLen <= Length <= the max it was checked
// against, and a known Type.
type Header struct {
	Version uint8
	Length  uint32
	Type    Type
}

// limit returns the effective maximum for a caller-supplied max: zero means
// MaxMessageLen.
func limit(max uint32) uint32 {
	if max == 0 {
		return MaxMessageLen
	}
	return max
}

// ParseHeader decodes and validates the common header at the start of b.
// Bytes of b past HeaderLen are ignored. max bounds Length; zero means
// MaxMessageLen. Checks run in the order short input, version, length, type,
// so the error names the first problem.
func ParseHeader(b []byte, max uint32) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("%w: header needs %d bytes, have %d", ErrShort, HeaderLen, len(b))
	}
	h := Header{Version: b[0], Length: binary.BigEndian.Uint32(b[1:5]), Type: Type(b[5])}
	if h.Version != Version {
		return Header{}, fmt.Errorf("%w %d (want %d)", ErrVersion, h.Version, Version)
	}
	if max = limit(max); h.Length < HeaderLen || h.Length > max {
		return Header{}, fmt.Errorf("%w %d (want %d..%d)", ErrLength, h.Length, HeaderLen, max)
	}
	if !h.Type.Known() {
		return Header{}, fmt.Errorf("%w %d", ErrType, uint8(h.Type))
	}
	return h, nil
}
