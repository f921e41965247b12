package inspect

import (
	"strconv"
	"strings"
	"unicode"
)

// Record describes one inspected connection; the Server writes exactly one
// per connection. In JSON every field is always present, with "" or 0 for
// what was not seen.
type Record struct {
	// Peer is the TCP peer of the connection, as seen by the inspector.
	Peer string `json:"peer"`
	// Proxy is "v1" or "v2" when a PROXY signature was seen (even if the
	// header then failed to parse), otherwise "none".
	Proxy string `json:"proxy"`
	// Command is "PROXY" or "LOCAL"; empty unless a header parsed.
	Command string `json:"command"`
	// Family is "TCP4", "TCP6", "UDP4", "UDP6", "UNIX-STREAM", "UNIX-DGRAM"
	// or "UNSPEC"; empty unless a header parsed.
	Family string `json:"family"`
	// Src and Dst are the addresses the header carries, empty if it has none.
	Src string `json:"src"`
	Dst string `json:"dst"`
	// Bytes counts the payload: every byte after a valid PROXY header, or
	// every byte of the connection when there is no header. When the header
	// is malformed its end is unknown, so Bytes counts every byte received,
	// the bad header included.
	Bytes int64 `json:"bytes"`
	// BMPTypes lists BMP message types in the order first seen, with counts.
	// A message is counted once its common header is valid and it is whole.
	BMPTypes []TypeCount `json:"bmp_types"`
	// SysName and SysDescr come from the last Initiation that carried them.
	SysName  string `json:"sys_name"`
	SysDescr string `json:"sys_descr"`
	// TermReason is the Reason of the last Termination that carried one, as
	// named by bmp.Termination.ReasonString.
	TermReason string `json:"term_reason"`
	// BMPError is why BMP decoding stopped early, if it did. Byte counting
	// goes on after it.
	BMPError string `json:"bmp_error"`
	// Error is a PROXY header or connection error, if any.
	Error string `json:"error"`
}

// TypeCount is the number of BMP messages of one type.
type TypeCount struct {
	Type  string `json:"type"`
	Count int64  `json:"count"`
}

// String renders r as the one-line text form, without a newline, e.g.
//
//	peer=127.0.0.1:40522 proxy=v2 cmd=PROXY family=TCP4 src=127.0.0.1:51000 dst=127.0.0.1:5000 bytes=87 bmp=initiation:1,peer-down:1 sysName="edge-r1" sysDescr="FRRouting 8.4.4"
//
// Fields with nothing to say are left out, except peer, proxy and bytes.
func (r Record) String() string {
	var b strings.Builder
	field := func(key, val string) {
		if val == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(val)
	}
	field("peer", bare(r.Peer))
	field("proxy", bare(r.Proxy))
	field("cmd", bare(r.Command))
	field("family", bare(r.Family))
	field("src", bare(r.Src))
	field("dst", bare(r.Dst))
	field("bytes", strconv.FormatInt(r.Bytes, 10))
	if len(r.BMPTypes) > 0 {
		parts := make([]string, len(r.BMPTypes))
		for i, tc := range r.BMPTypes {
			parts[i] = tc.Type + ":" + strconv.FormatInt(tc.Count, 10)
		}
		field("bmp", strings.Join(parts, ","))
	}
	field("sysName", quoted(r.SysName))
	field("sysDescr", quoted(r.SysDescr))
	field("termReason", bare(r.TermReason))
	field("bmpError", quoted(r.BMPError))
	field("error", quoted(r.Error))
	return b.String()
}

// quoted returns s as a Go-quoted string, or "" for an empty s.
func quoted(s string) string {
	if s == "" {
		return ""
	}
	return strconv.Quote(s)
}

// bare returns s as is when it is a single printable token, and quoted
// otherwise, so that a value can never split or forge a field.
func bare(s string) string {
	if strings.IndexFunc(s, func(c rune) bool { return c == '"' || c == '=' || !unicode.IsGraphic(c) || unicode.IsSpace(c) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
