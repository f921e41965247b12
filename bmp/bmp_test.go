package bmp_test

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// capture reads a file from testdata.
func capture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	return b
}

const (
	frrFile   = "frr-8.4-bmp-initiation.bin"
	gobgpFile = "gobgp-3.10-bmp-initiation.bin"
)

// tlv encodes one information TLV.
func tlv(typ uint16, val string) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	return append(b, val...)
}

// message builds a whole message of type typ around body, with a correct
// length field.
func message(typ bmp.Type, body ...[]byte) []byte {
	b := []byte{bmp.Version, 0, 0, 0, 0, byte(typ)}
	for _, p := range body {
		b = append(b, p...)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)))
	return b
}

// header builds a raw common header.
func header(version uint8, length uint32, typ uint8) []byte {
	b := []byte{version, 0, 0, 0, 0, typ}
	binary.BigEndian.PutUint32(b[1:5], length)
	return b
}

func TestTypeString(t *testing.T) {
	want := map[bmp.Type]string{
		0: "route-monitoring", 1: "statistics-report", 2: "peer-down", 3: "peer-up",
		4: "initiation", 5: "termination", 6: "route-mirroring", 7: "type-7", 255: "type-255",
	}
	for typ, s := range want {
		if got := typ.String(); got != s {
			t.Errorf("Type(%d).String() = %q, want %q", uint8(typ), got, s)
		}
		if got, known := typ.Known(), typ <= 6; got != known {
			t.Errorf("Type(%d).Known() = %v, want %v", uint8(typ), got, known)
		}
	}
}

func TestParseHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		max     uint32
		want    bmp.Header
		wantErr error
		errText string
	}{
		{name: "minimal", in: header(3, 6, 4), want: bmp.Header{Version: 3, Length: 6, Type: bmp.TypeInitiation}},
		{name: "extra bytes ignored", in: append(header(3, 100, 0), 1, 2, 3), want: bmp.Header{Version: 3, Length: 100}},
		{name: "length equals max", in: header(3, 64, 6), max: 64, want: bmp.Header{Version: 3, Length: 64, Type: bmp.TypeRouteMirroring}},
		{name: "zero max means default", in: header(3, bmp.MaxMessageLen, 1), want: bmp.Header{Version: 3, Length: bmp.MaxMessageLen, Type: bmp.TypeStatisticsReport}},
		{name: "empty", in: nil, wantErr: bmp.ErrShort, errText: "bmp: short input: header needs 6 bytes, have 0"},
		{name: "five bytes", in: header(3, 6, 4)[:5], wantErr: bmp.ErrShort, errText: "bmp: short input: header needs 6 bytes, have 5"},
		{name: "version 4", in: header(4, 6, 4), wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 4 (want 3)"},
		{name: "version 1", in: header(1, 6, 4), wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 1 (want 3)"},
		{name: "version checked before length", in: header(0, 0, 99), wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 0 (want 3)"},
		{name: "length below header", in: header(3, 5, 4), wantErr: bmp.ErrLength, errText: "bmp: invalid message length 5 (want 6..1048576)"},
		{name: "length zero", in: header(3, 0, 4), wantErr: bmp.ErrLength, errText: "bmp: invalid message length 0 (want 6..1048576)"},
		{name: "length over default max", in: header(3, bmp.MaxMessageLen+1, 4), wantErr: bmp.ErrLength, errText: "bmp: invalid message length 1048577 (want 6..1048576)"},
		{name: "length over max", in: header(3, 65, 0), max: 64, wantErr: bmp.ErrLength, errText: "bmp: invalid message length 65 (want 6..64)"},
		{name: "length 4 GiB", in: header(3, math.MaxUint32, 0), wantErr: bmp.ErrLength, errText: "bmp: invalid message length 4294967295 (want 6..1048576)"},
		{name: "length checked before type", in: header(3, 1, 200), wantErr: bmp.ErrLength, errText: "bmp: invalid message length 1 (want 6..1048576)"},
		{name: "type 7", in: header(3, 6, 7), wantErr: bmp.ErrType, errText: "bmp: unknown message type 7"},
		{name: "type 255", in: header(3, 6, 255), wantErr: bmp.ErrType, errText: "bmp: unknown message type 255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bmp.ParseHeader(tt.in, tt.max)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ParseHeader: unexpected error %v", err)
				}
				if got != tt.want {
					t.Fatalf("ParseHeader = %+v, want %+v", got, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseHeader error = %v, want wrapping %v", err, tt.wantErr)
			}
			if err.Error() != tt.errText {
				t.Fatalf("ParseHeader error text = %q, want %q", err.Error(), tt.errText)
			}
			if got != (bmp.Header{}) {
				t.Fatalf("ParseHeader returned %+v with an error, want zero Header", got)
			}
		})
	}
}

func TestParseInitiation(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    bmp.Initiation
		wantErr error
		errText string
	}{
		{
			name: "gobgp capture",
			in:   capture(t, gobgpFile),
			want: bmp.Initiation{SysName: "GoBGP", SysDescr: "3.10.0"},
		},
		{
			name: "frr capture first message",
			in:   capture(t, frrFile)[:36],
			want: bmp.Initiation{SysName: "edge-r1", SysDescr: "FRRouting 8.4.4"},
		},
		{
			name: "no TLVs",
			in:   message(bmp.TypeInitiation),
			want: bmp.Initiation{},
		},
		{
			name: "strings, unknown and repeated TLVs",
			in: message(bmp.TypeInitiation, tlv(0, "hello"), tlv(2, "old"), tlv(9, "\x01\x02"), tlv(0, ""),
				tlv(2, "new"), tlv(1, "descr"), tlv(65535, "")),
			want: bmp.Initiation{
				SysDescr: "descr", SysName: "new", Strings: []string{"hello", ""},
				Unknown: []bmp.TLV{{Type: 9, Value: []byte{1, 2}}, {Type: 65535, Value: []byte{}}},
			},
		},
		{
			name: "wrong message type", in: message(bmp.TypePeerDown, tlv(1, "x")),
			wantErr: bmp.ErrMessageType, errText: "bmp: unexpected message type peer-down (want initiation)",
		},
		{
			name: "bad version", in: append([]byte{4}, message(bmp.TypeInitiation)[1:]...),
			wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 4 (want 3)",
		},
		{
			name: "unknown type", in: header(3, 6, 9),
			wantErr: bmp.ErrType, errText: "bmp: unknown message type 9",
		},
		{
			name: "short header", in: []byte{3, 0, 0},
			wantErr: bmp.ErrShort, errText: "bmp: short input: header needs 6 bytes, have 3",
		},
		{
			name: "truncated message", in: capture(t, frrFile)[:20],
			wantErr: bmp.ErrShort, errText: "bmp: short input: message length 36, have 20 bytes",
		},
		{
			name: "trailing bytes after message", in: capture(t, frrFile),
			wantErr: bmp.ErrLength, errText: "bmp: invalid message length 36: input has 87 bytes",
		},
		{
			name: "partial TLV header", in: message(bmp.TypeInitiation, tlv(2, "r1"), []byte{0, 1}),
			wantErr: bmp.ErrTLV, errText: "bmp: malformed TLV at offset 12 in initiation: 2 trailing bytes, TLV header needs 4",
		},
		{
			name: "TLV longer than message", in: message(bmp.TypeInitiation, tlv(1, "abc")[:6]),
			wantErr: bmp.ErrTLV, errText: "bmp: malformed TLV at offset 6 in initiation: type 1 length 3 exceeds remaining 2 bytes",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bmp.ParseInitiation(tt.in)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ParseInitiation: unexpected error %v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("ParseInitiation = %#v, want %#v", got, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.errText {
				t.Fatalf("ParseInitiation error = %q, want %q wrapping %v", err, tt.errText, tt.wantErr)
			}
		})
	}
}

func TestParseInitiationCopiesUnknown(t *testing.T) {
	msg := message(bmp.TypeInitiation, tlv(7, "ab"))
	in, err := bmp.ParseInitiation(msg)
	if err != nil {
		t.Fatal(err)
	}
	msg[len(msg)-1] = 'X'
	if got := string(in.Unknown[0].Value); got != "ab" {
		t.Fatalf("Unknown value aliases the message: got %q after overwrite", got)
	}
}

func TestParseTermination(t *testing.T) {
	reason := func(code uint16) []byte {
		return tlv(1, string(binary.BigEndian.AppendUint16(nil, code)))
	}
	tests := []struct {
		name       string
		in         []byte
		want       bmp.Termination
		wantReason string
		wantErr    error
		errText    string
	}{
		{name: "no TLVs", in: message(bmp.TypeTermination), want: bmp.Termination{}, wantReason: ""},
		{name: "admin closed", in: message(bmp.TypeTermination, reason(0)), want: bmp.Termination{HasReason: true}, wantReason: "admin-closed"},
		{name: "unspecified", in: message(bmp.TypeTermination, reason(1)), want: bmp.Termination{Reason: 1, HasReason: true}, wantReason: "unspecified"},
		{name: "out of resources", in: message(bmp.TypeTermination, reason(2)), want: bmp.Termination{Reason: 2, HasReason: true}, wantReason: "out-of-resources"},
		{name: "redundant", in: message(bmp.TypeTermination, reason(3)), want: bmp.Termination{Reason: 3, HasReason: true}, wantReason: "redundant-connection"},
		{name: "permanently closed", in: message(bmp.TypeTermination, reason(4)), want: bmp.Termination{Reason: 4, HasReason: true}, wantReason: "permanently-admin-closed"},
		{name: "unknown code", in: message(bmp.TypeTermination, reason(300)), want: bmp.Termination{Reason: 300, HasReason: true}, wantReason: "reason-300"},
		{
			name: "strings and unknown TLVs",
			in:   message(bmp.TypeTermination, tlv(0, "bye"), reason(1), tlv(2, "z"), tlv(0, "now")),
			want: bmp.Termination{
				Reason: 1, HasReason: true, Strings: []string{"bye", "now"},
				Unknown: []bmp.TLV{{Type: 2, Value: []byte("z")}},
			},
			wantReason: "unspecified",
		},
		{
			name: "reason too long", in: message(bmp.TypeTermination, tlv(1, "abc")),
			wantErr: bmp.ErrTLV, errText: "bmp: malformed TLV at offset 6 in termination: reason length 3 (want 2)",
		},
		{
			name: "reason empty", in: message(bmp.TypeTermination, tlv(0, "x"), tlv(1, "")),
			wantErr: bmp.ErrTLV, errText: "bmp: malformed TLV at offset 11 in termination: reason length 0 (want 2)",
		},
		{
			name: "wrong message type", in: capture(t, gobgpFile),
			wantErr: bmp.ErrMessageType, errText: "bmp: unexpected message type initiation (want termination)",
		},
		{
			name: "TLV past end", in: message(bmp.TypeTermination, tlv(0, "abcdef")[:5]),
			wantErr: bmp.ErrTLV, errText: "bmp: malformed TLV at offset 6 in termination: type 0 length 6 exceeds remaining 1 bytes",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bmp.ParseTermination(tt.in)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ParseTermination: unexpected error %v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("ParseTermination = %#v, want %#v", got, tt.want)
				}
				if r := got.ReasonString(); r != tt.wantReason {
					t.Fatalf("ReasonString = %q, want %q", r, tt.wantReason)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.errText {
				t.Fatalf("ParseTermination error = %q, want %q wrapping %v", err, tt.errText, tt.wantErr)
			}
		})
	}
}

func TestSplit(t *testing.T) {
	frr := capture(t, frrFile)
	tests := []struct {
		name     string
		in       []byte
		max      uint32
		wantMsg  int // length of msg; 0 means nil
		wantErr  error
		errText  string
		wantRest int
	}{
		{name: "empty", in: nil},
		{name: "one byte", in: frr[:1], wantRest: 1},
		{name: "five bytes", in: frr[:5], wantRest: 5},
		{name: "header only", in: frr[:6], wantRest: 6},
		{name: "one short", in: frr[:35], wantRest: 35},
		{name: "exact", in: frr[:36], wantMsg: 36},
		{name: "with rest", in: frr, wantMsg: 36, wantRest: 51},
		{name: "second message", in: frr[36:], wantMsg: 51},
		{name: "bad version at first byte", in: []byte{4}, wantRest: 1, wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 4 (want 3)"},
		{name: "bad length at fifth byte", in: header(3, 70000, 0)[:5], max: 65535, wantRest: 5, wantErr: bmp.ErrLength, errText: "bmp: invalid message length 70000 (want 6..65535)"},
		{name: "bad type at sixth byte", in: header(3, 6, 8), wantRest: 6, wantErr: bmp.ErrType, errText: "bmp: unknown message type 8"},
		{name: "length over max with body present", in: append(header(3, 10, 0), 1, 2, 3, 4), max: 9, wantRest: 10, wantErr: bmp.ErrLength, errText: "bmp: invalid message length 10 (want 6..9)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, rest, err := bmp.Split(tt.in, tt.max)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || err.Error() != tt.errText {
					t.Fatalf("Split error = %v, want %q wrapping %v", err, tt.errText, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Split: unexpected error %v", err)
			}
			if (msg == nil) != (tt.wantMsg == 0) || len(msg) != tt.wantMsg || cap(msg) != len(msg) {
				t.Fatalf("Split msg len %d cap %d (nil %v), want len %d", len(msg), cap(msg), msg == nil, tt.wantMsg)
			}
			if len(rest) != tt.wantRest {
				t.Fatalf("Split rest len %d, want %d", len(rest), tt.wantRest)
			}
		})
	}
}
