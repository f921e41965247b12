package inspect_test

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/inspect"
)

// chunkReader returns data in reads whose sizes cycle through sizes (at
// least 1 byte each). It has no WriteTo, so io.Copy goes through Read.
type chunkReader struct {
	data  []byte
	sizes []byte
	i     int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(r.sizes) > 0 {
		n = 1 + int(r.sizes[r.i%len(r.sizes)])
		r.i++
	}
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func TestScanReadError(t *testing.T) {
	frr := capture(t, frrFile)
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(frr[:40]), &failReader{err: boom})
	got := inspect.Scan(r, 0)
	want := inspect.Record{
		Bytes: 40, BMPTypes: []inspect.TypeCount{{Type: "initiation", Count: 1}},
		SysName: "edge-r1", SysDescr: "FRRouting 8.4.4", Error: "read: boom",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Scan\n got %+v\nwant %+v", got, want)
	}
}

type failReader struct{ err error }

func (r *failReader) Read([]byte) (int, error) { return 0, r.err }

func FuzzScan(f *testing.F) {
	frr := capture(f, frrFile)
	gobgp := capture(f, gobgpFile)
	for _, b := range [][]byte{frr, gobgp, frr[:40], frr[:80], append(bytes.Clone(gobgp), frr...), []byte("hello"), nil,
		bmpMessage(bmp.TypeTermination, []byte{0, 1, 0, 2, 0, 3})} {
		f.Add(b, []byte{0, 5, 200}, uint32(0))
	}
	f.Add(frr, []byte{}, uint32(40))
	f.Fuzz(func(t *testing.T, data, sizes []byte, max uint32) {
		whole := inspect.Scan(bytes.NewReader(data), max)
		chunked := inspect.Scan(&chunkReader{data: data, sizes: sizes}, max)
		if !reflect.DeepEqual(whole, chunked) {
			t.Fatalf("result depends on read sizes:\nwhole   %+v\nchunked %+v", whole, chunked)
		}
		if whole.Bytes != int64(len(data)) || whole.Error != "" {
			t.Fatalf("Bytes %d, Error %q for %d bytes of input", whole.Bytes, whole.Error, len(data))
		}
		if len(data) == 0 || data[0] != bmp.Version {
			if len(whole.BMPTypes) != 0 || whole.BMPError != "" || whole.SysName != "" || whole.SysDescr != "" || whole.TermReason != "" {
				t.Fatalf("decoded a stream that does not start with the BMP version: %+v", whole)
			}
			return
		}
		// Oracle: frame with bmp.Reader and parse Initiation and Termination
		// bodies; Scan must count the same messages and stop at the same
		// error.
		r := bmp.NewReader(bytes.NewReader(data), max)
		var want []inspect.TypeCount
		var wantErr error
		for wantErr == nil {
			h, msg, err := r.Next()
			if err != nil {
				if err != io.EOF {
					wantErr = err
				}
				break
			}
			i := 0
			for i < len(want) && want[i].Type != h.Type.String() {
				i++
			}
			if i == len(want) {
				want = append(want, inspect.TypeCount{Type: h.Type.String()})
			}
			want[i].Count++
			switch h.Type {
			case bmp.TypeInitiation:
				_, wantErr = bmp.ParseInitiation(msg)
			case bmp.TypeTermination:
				_, wantErr = bmp.ParseTermination(msg)
			}
		}
		if want == nil {
			want = []inspect.TypeCount{}
		}
		if !reflect.DeepEqual(whole.BMPTypes, want) {
			t.Fatalf("BMPTypes %+v, want %+v", whole.BMPTypes, want)
		}
		switch {
		case wantErr == nil:
			if whole.BMPError != "" {
				t.Fatalf("BMPError %q, want none", whole.BMPError)
			}
		case wantErr == io.ErrUnexpectedEOF:
			if !strings.HasPrefix(whole.BMPError, "bmp: stream ended after ") || !strings.HasSuffix(whole.BMPError, ": unexpected EOF") {
				t.Fatalf("BMPError %q, want a truncation", whole.BMPError)
			}
		default:
			if whole.BMPError != wantErr.Error() {
				t.Fatalf("BMPError %q, want %q", whole.BMPError, wantErr)
			}
		}
	})
}
