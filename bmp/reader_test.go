package bmp_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// readAll drains r and returns copies of the messages and the final error.
func readAll(t testing.TB, r *bmp.Reader) ([][]byte, error) {
	t.Helper()
	var msgs [][]byte
	for {
		h, msg, err := r.Next()
		if err != nil {
			if msg != nil || h != (bmp.Header{}) {
				t.Fatalf("Next returned header %+v and %d bytes with error %v", h, len(msg), err)
			}
			return msgs, err
		}
		if uint32(len(msg)) != h.Length || h.Version != bmp.Version || byte(h.Type) != msg[5] {
			t.Fatalf("Next header %+v does not describe its %d-byte message", h, len(msg))
		}
		msgs = append(msgs, bytes.Clone(msg))
	}
}

func TestReaderFRRCapture(t *testing.T) {
	frr := capture(t, frrFile)
	wrappers := map[string]func(io.Reader) io.Reader{
		"plain":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	}
	for name, wrap := range wrappers {
		t.Run(name, func(t *testing.T) {
			r := bmp.NewReader(wrap(bytes.NewReader(frr)), 0)
			h, msg, err := r.Next()
			if err != nil {
				t.Fatalf("first Next: %v", err)
			}
			if want := (bmp.Header{Version: 3, Length: 36, Type: bmp.TypeInitiation}); h != want {
				t.Fatalf("first header %+v, want %+v", h, want)
			}
			in, err := bmp.ParseInitiation(msg)
			if err != nil {
				t.Fatalf("ParseInitiation: %v", err)
			}
			if in.SysDescr != "FRRouting 8.4.4" || in.SysName != "edge-r1" || in.Strings != nil || in.Unknown != nil {
				t.Fatalf("initiation %#v", in)
			}
			h, msg, err = r.Next()
			if err != nil {
				t.Fatalf("second Next: %v", err)
			}
			if want := (bmp.Header{Version: 3, Length: 51, Type: bmp.TypePeerDown}); h != want {
				t.Fatalf("second header %+v, want %+v", h, want)
			}
			if !bytes.Equal(msg, frr[36:]) {
				t.Fatalf("peer down message differs from capture")
			}
			for range 2 { // io.EOF is sticky
				if _, _, err := r.Next(); err != io.EOF {
					t.Fatalf("Next at end = %v, want io.EOF", err)
				}
			}
		})
	}
}

func TestReaderGoBGPCapture(t *testing.T) {
	gobgp := capture(t, gobgpFile)
	msgs, err := readAll(t, bmp.NewReader(iotest.OneByteReader(bytes.NewReader(gobgp)), 0))
	if err != io.EOF || len(msgs) != 1 {
		t.Fatalf("got %d messages, err %v; want 1, io.EOF", len(msgs), err)
	}
	in, err := bmp.ParseInitiation(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if in.SysName != "GoBGP" || in.SysDescr != "3.10.0" {
		t.Fatalf("initiation %#v", in)
	}
}

// errReader returns its data and then err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// emptyReader returns (0, nil) forever.
type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

func TestReaderEnds(t *testing.T) {
	frr := capture(t, frrFile)
	boom := errors.New("boom")
	tests := []struct {
		name     string
		r        io.Reader
		max      uint32
		wantMsgs int
		wantErr  error  // compared with errors.Is
		errText  string // exact text
	}{
		{name: "empty stream", r: bytes.NewReader(nil), wantErr: io.EOF, errText: "EOF"},
		{name: "two messages", r: bytes.NewReader(frr), wantMsgs: 2, wantErr: io.EOF, errText: "EOF"},
		{name: "ends inside header", r: bytes.NewReader(frr[:3]), wantErr: io.ErrUnexpectedEOF, errText: "unexpected EOF"},
		{name: "ends inside second message", r: bytes.NewReader(frr[:80]), wantMsgs: 1, wantErr: io.ErrUnexpectedEOF, errText: "unexpected EOF"},
		{name: "read error between messages", r: &errReader{data: frr[:36], err: boom}, wantMsgs: 1, wantErr: boom, errText: "bmp: read: boom"},
		{name: "read error inside message", r: &errReader{data: frr[:40], err: boom}, wantMsgs: 1, wantErr: boom, errText: "bmp: read: boom"},
		{name: "no progress", r: emptyReader{}, wantErr: io.ErrNoProgress, errText: "bmp: read: multiple Read calls return no data or error"},
		{name: "bad version after a message", r: bytes.NewReader(append(frr[:36:36], 2, 0, 0)), wantMsgs: 1, wantErr: bmp.ErrVersion, errText: "bmp: unsupported version 2 (want 3)"},
		{name: "message over max", r: bytes.NewReader(frr), max: 40, wantMsgs: 1, wantErr: bmp.ErrLength, errText: "bmp: invalid message length 51 (want 6..40)"},
		{name: "unknown type", r: bytes.NewReader(header(3, 6, 7)), wantErr: bmp.ErrType, errText: "bmp: unknown message type 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bmp.NewReader(tt.r, tt.max)
			msgs, err := readAll(t, r)
			if len(msgs) != tt.wantMsgs {
				t.Fatalf("got %d messages, want %d", len(msgs), tt.wantMsgs)
			}
			if !errors.Is(err, tt.wantErr) || err.Error() != tt.errText {
				t.Fatalf("final error %q, want %q wrapping %v", err, tt.errText, tt.wantErr)
			}
			if _, _, again := r.Next(); again != err {
				t.Fatalf("error not sticky: second call returned %v", again)
			}
		})
	}
}

func TestReaderLargeMessages(t *testing.T) {
	// Messages larger than the initial buffer, back to back, read in small
	// chunks so the buffer is compacted and grown while partly filled.
	var stream []byte
	sizes := []int{100 << 10, 6, 17 << 10, bmp.MaxMessageLen - 6, 40}
	for i, n := range sizes {
		body := bytes.Repeat([]byte{byte(i)}, n)
		stream = append(stream, message(bmp.TypeRouteMonitoring, body)...)
	}
	msgs, err := readAll(t, bmp.NewReader(iotest.HalfReader(bytes.NewReader(stream)), 0))
	if err != io.EOF {
		t.Fatalf("final error %v, want io.EOF", err)
	}
	if len(msgs) != len(sizes) {
		t.Fatalf("got %d messages, want %d", len(msgs), len(sizes))
	}
	off := 0
	for i, m := range msgs {
		if len(m) != sizes[i]+bmp.HeaderLen || !bytes.Equal(m, stream[off:off+len(m)]) {
			t.Fatalf("message %d: %d bytes, differs from stream", i, len(m))
		}
		off += len(m)
	}
}
