package bmp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
)

// tlvHeaderLen is the size of an information TLV's type and length fields
// (RFC 7854 §4.4).
const tlvHeaderLen = 4

// Information TLV types of Initiation (RFC 7854 §4.4) and Termination
// (§4.5) messages.
const (
	InfoString   uint16 = 0 // free-form UTF-8 string, both messages
	InfoSysDescr uint16 = 1 // Initiation only
	InfoSysName  uint16 = 2 // Initiation only
	InfoReason   uint16 = 1 // Termination only: 2-byte reason code
)

// Termination reason codes (RFC 7854 §4.5).
const (
	ReasonAdminClosed          uint16 = 0
	ReasonUnspecified          uint16 = 1
	ReasonOutOfResources       uint16 = 2
	ReasonRedundantConnection  uint16 = 3
	ReasonPermanentAdminClosed uint16 = 4
)

// TLV is an information TLV this package does not interpret. Value is a copy
// and does not alias the message it came from.
type TLV struct {
	Type  uint16
	Value []byte
}

// Initiation is a decoded Initiation message (RFC 7854 §4.3). When a TLV
// type repeats, SysDescr and SysName keep the last value; Strings and Unknown
// keep every value in message order.
type Initiation struct {
	SysDescr string
	SysName  string
	Strings  []string
	Unknown  []TLV
}

// Termination is a decoded Termination message (RFC 7854 §4.5). Reason is
// meaningful only when HasReason is true; a repeated Reason TLV keeps the last
// value.
type Termination struct {
	Reason    uint16
	HasReason bool
	Strings   []string
	Unknown   []TLV
}

// ReasonString returns a short name for the reason code ("admin-closed",
// "unspecified", "out-of-resources", "redundant-connection",
// "permanently-admin-closed", or "reason-N" for other codes), or "" when the
// message carried no Reason TLV.
func (t Termination) ReasonString() string {
	if !t.HasReason {
		return ""
	}
	switch t.Reason {
	case ReasonAdminClosed:
		return "admin-closed"
	case ReasonUnspecified:
		return "unspecified"
	case ReasonOutOfResources:
		return "out-of-resources"
	case ReasonRedundantConnection:
		return "redundant-connection"
	case ReasonPermanentAdminClosed:
		return "permanently-admin-closed"
	}
	return "reason-" + strconv.Itoa(int(t.Reason))
}

// ParseInitiation decodes msg, which must be exactly one whole Initiation
// message including its common header. TLVs of unknown type are kept in
// Unknown, not rejected.
func ParseInitiation(msg []byte) (Initiation, error) {
	var in Initiation
	err := walkTLVs(msg, TypeInitiation, func(typ uint16, val []byte) error {
		switch typ {
		case InfoString:
			in.Strings = append(in.Strings, string(val))
		case InfoSysDescr:
			in.SysDescr = string(val)
		case InfoSysName:
			in.SysName = string(val)
		default:
			in.Unknown = append(in.Unknown, TLV{Type: typ, Value: bytes.Clone(val)})
		}
		return nil
	})
	if err != nil {
		return Initiation{}, err
	}
	return in, nil
}

// ParseTermination decodes msg, which must be exactly one whole Termination
// message including its common header. A Reason TLV must be 2 bytes long;
// TLVs of unknown type are kept in Unknown.
func ParseTermination(msg []byte) (Termination, error) {
	var t Termination
	err := walkTLVs(msg, TypeTermination, func(typ uint16, val []byte) error {
		switch typ {
		case InfoString:
			t.Strings = append(t.Strings, string(val))
		case InfoReason:
			if len(val) != 2 {
				return fmt.Errorf("reason length %d (want 2)", len(val))
			}
			t.Reason, t.HasReason = binary.BigEndian.Uint16(val), true
		default:
			t.Unknown = append(t.Unknown, TLV{Type: typ, Value: bytes.Clone(val)})
		}
		return nil
	})
	if err != nil {
		return Termination{}, err
	}
	return t, nil
}

// walkTLVs checks that msg is exactly one message of type want and calls fn
// for each information TLV after the common header, in order. val aliases
// msg and lies entirely within it. An error from fn describes the TLV's value
// and is wrapped with ErrTLV and the TLV's offset.
func walkTLVs(msg []byte, want Type, fn func(typ uint16, val []byte) error) error {
	// The message is already in memory, so only its own length bounds it.
	h, err := ParseHeader(msg, math.MaxUint32)
	if err != nil {
		return err
	}
	if h.Type != want {
		return fmt.Errorf("%w %s (want %s)", ErrMessageType, h.Type, want)
	}
	if uint64(len(msg)) < uint64(h.Length) {
		return fmt.Errorf("%w: message length %d, have %d bytes", ErrShort, h.Length, len(msg))
	}
	if uint64(len(msg)) > uint64(h.Length) {
		return fmt.Errorf("%w %d: input has %d bytes", ErrLength, h.Length, len(msg))
	}
	for off := HeaderLen; off < len(msg); {
		rest := msg[off:]
		if len(rest) < tlvHeaderLen {
			return fmt.Errorf("%w at offset %d in %s: %d trailing bytes, TLV header needs %d", ErrTLV, off, want, len(rest), tlvHeaderLen)
		}
		typ := binary.BigEndian.Uint16(rest[0:2])
		n := int(binary.BigEndian.Uint16(rest[2:4]))
		if n > len(rest)-tlvHeaderLen {
			return fmt.Errorf("%w at offset %d in %s: type %d length %d exceeds remaining %d bytes", ErrTLV, off, want, typ, n, len(rest)-tlvHeaderLen)
		}
		if err := fn(typ, rest[tlvHeaderLen:tlvHeaderLen+n]); err != nil {
			return fmt.Errorf("%w at offset %d in %s: %w", ErrTLV, off, want, err)
		}
		off += tlvHeaderLen + n
	}
	return nil
}

// EncodeInitiation builds an Initiation message carrying sysDescr and
// sysName, for tools and tests that play a router.
func EncodeInitiation(sysDescr, sysName string) []byte {
	msg := make([]byte, HeaderLen, HeaderLen+2*tlvHeaderLen+len(sysDescr)+len(sysName))
	msg[0] = Version
	msg[5] = byte(TypeInitiation)
	for _, tlv := range []struct {
		typ uint16
		val string
	}{{InfoSysDescr, sysDescr}, {InfoSysName, sysName}} {
		msg = binary.BigEndian.AppendUint16(msg, tlv.typ)
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(tlv.val)))
		msg = append(msg, tlv.val...)
	}
	binary.BigEndian.PutUint32(msg[1:5], uint32(len(msg)))
	return msg
}
