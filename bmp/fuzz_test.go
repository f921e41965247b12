package bmp_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// checkSentinel fails unless err wraps exactly one of the package's
// sentinel errors.
func checkSentinel(t *testing.T, err error) {
	t.Helper()
	n := 0
	for _, s := range []error{bmp.ErrShort, bmp.ErrVersion, bmp.ErrLength, bmp.ErrType, bmp.ErrMessageType, bmp.ErrTLV} {
		if errors.Is(err, s) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("error %q wraps %d sentinels, want 1", err, n)
	}
}

// addSeeds adds both captures, their concatenation and some truncations.
func addSeeds(f *testing.F, add func(b []byte)) {
	frr := capture(f, frrFile)
	gobgp := capture(f, gobgpFile)
	for _, b := range [][]byte{
		frr, gobgp, frr[:36], frr[36:], append(bytes.Clone(gobgp), frr...), frr[:40], gobgp[:10],
		message(bmp.TypeTermination, tlv(0, "bye"), tlv(1, "\x00\x01")), header(3, 6, 4), nil,
	} {
		add(b)
	}
}

func FuzzParseHeader(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b, uint32(0)) })
	f.Add(header(3, 70000, 0), uint32(65535))
	f.Fuzz(func(t *testing.T, b []byte, max uint32) {
		orig := bytes.Clone(b)
		h, err := bmp.ParseHeader(b, max)
		if !bytes.Equal(b, orig) {
			t.Fatal("ParseHeader modified its input")
		}
		if err != nil {
			checkSentinel(t, err)
			if h != (bmp.Header{}) {
				t.Fatalf("non-zero header %+v with error", h)
			}
			if len(b) < bmp.HeaderLen && !errors.Is(err, bmp.ErrShort) {
				t.Fatalf("%d-byte input gave %v, want ErrShort", len(b), err)
			}
			return
		}
		limit := max
		if limit == 0 {
			limit = bmp.MaxMessageLen
		}
		if len(b) < bmp.HeaderLen || h.Version != bmp.Version || h.Length < bmp.HeaderLen || h.Length > limit || !h.Type.Known() {
			t.Fatalf("accepted invalid header %+v (max %d, input %d bytes)", h, max, len(b))
		}
		if h.Length != binary.BigEndian.Uint32(b[1:5]) || byte(h.Type) != b[5] {
			t.Fatalf("header %+v does not match input % x", h, b[:bmp.HeaderLen])
		}
	})
}

func FuzzParseInitiation(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		in, err := bmp.ParseInitiation(b)
		te, terr := bmp.ParseTermination(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("parser modified its input")
		}
		// Decoded content plus one 4-byte TLV header per item must fit in
		// the body.
		var used, items int
		if err != nil {
			checkSentinel(t, err)
		} else {
			used, items = len(in.SysDescr)+len(in.SysName), 0
			for _, s := range in.Strings {
				used, items = used+len(s), items+1
			}
			for _, u := range in.Unknown {
				used, items = used+len(u.Value), items+1
			}
			if in.SysDescr != "" {
				items++
			}
			if in.SysName != "" {
				items++
			}
			checkFits(t, b, bmp.TypeInitiation, used, items)
		}
		if terr != nil {
			checkSentinel(t, terr)
		} else {
			used, items = 0, 0
			if te.HasReason {
				used, items = 2, 1
			} else if te.Reason != 0 {
				t.Fatalf("Reason %d without HasReason", te.Reason)
			}
			for _, s := range te.Strings {
				used, items = used+len(s), items+1
			}
			for _, u := range te.Unknown {
				used, items = used+len(u.Value), items+1
			}
			checkFits(t, b, bmp.TypeTermination, used, items)
			_ = te.ReasonString()
		}
		if err == nil && terr == nil {
			t.Fatal("one message parsed as both initiation and termination")
		}
	})
}

// checkFits fails unless b is one whole message of type typ whose body can
// hold items TLVs carrying used value bytes.
func checkFits(t *testing.T, b []byte, typ bmp.Type, used, items int) {
	t.Helper()
	h, err := bmp.ParseHeader(b, ^uint32(0))
	if err != nil || h.Type != typ || int(h.Length) != len(b) {
		t.Fatalf("parsed a %v message from input with header %+v, %v (%d bytes)", typ, h, err, len(b))
	}
	if used+4*items > len(b)-bmp.HeaderLen {
		t.Fatalf("decoded %d bytes in %d TLVs from a %d-byte body", used, items, len(b)-bmp.HeaderLen)
	}
}

func FuzzSplit(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b, uint32(0)) })
	f.Add(header(3, 70000, 0)[:5], uint32(65535))
	f.Fuzz(func(t *testing.T, b []byte, max uint32) {
		msg, rest, err := bmp.Split(b, max)
		// msg and rest must partition b in place: msg = b[:k:k], rest = b[k:].
		if len(msg)+len(rest) != len(b) || cap(msg) != len(msg) {
			t.Fatalf("Split(%d bytes) = msg %d (cap %d), rest %d: not a partition of the input", len(b), len(msg), cap(msg), len(rest))
		}
		if len(msg) > 0 && &msg[0] != &b[0] {
			t.Fatal("msg does not start at the input")
		}
		if len(rest) > 0 && &rest[0] != &b[len(msg)] {
			t.Fatal("rest does not follow msg in the input")
		}
		h, herr := bmp.ParseHeader(b, max)
		switch {
		case err != nil:
			checkSentinel(t, err)
			if msg != nil || len(rest) != len(b) {
				t.Fatal("Split consumed input on error")
			}
			if len(b) >= bmp.HeaderLen && (herr == nil || herr.Error() != err.Error()) {
				t.Fatalf("Split error %v, ParseHeader error %v", err, herr)
			}
		case msg == nil:
			if len(rest) != len(b) {
				t.Fatal("Split consumed input without a message")
			}
			if len(b) >= bmp.HeaderLen && (herr != nil || uint64(h.Length) <= uint64(len(b))) {
				t.Fatalf("Split wants more bytes but header %+v, %v fits in %d", h, herr, len(b))
			}
		default:
			if herr != nil || int(h.Length) != len(msg) {
				t.Fatalf("Split returned %d bytes for header %+v, %v", len(msg), h, herr)
			}
		}
	})
}

// chunkReader returns data in reads whose sizes cycle through sizes.
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
		n = int(r.sizes[r.i%len(r.sizes)]) // 0 tests empty reads
		r.i++
	}
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func FuzzReader(f *testing.F) {
	addSeeds(f, func(b []byte) { f.Add(b, []byte{1, 7, 0, 200}, uint32(0)) })
	f.Add(capture(f, frrFile), []byte{}, uint32(40))
	f.Fuzz(func(t *testing.T, data, sizes []byte, max uint32) {
		// Fewer than 100 entries, not all zero, so empty reads never reach
		// the Reader's io.ErrNoProgress limit.
		sizes = sizes[:min(len(sizes), 32)]
		if bytes.Count(sizes, []byte{0}) == len(sizes) {
			sizes = nil
		}
		orig := bytes.Clone(data)
		r := bmp.NewReader(&chunkReader{data: data, sizes: sizes}, max)
		msgs, err := readAll(t, r)
		if !bytes.Equal(data, orig) {
			t.Fatal("Reader modified its input")
		}
		// The Reader must agree with repeated Split over the whole input.
		rest := data
		for i := 0; ; i++ {
			msg, next, serr := bmp.Split(rest, max)
			if serr != nil {
				if len(msgs) != i || err == nil || err.Error() != serr.Error() {
					t.Fatalf("Split failed at message %d with %v; Reader returned %d messages, %v", i, serr, len(msgs), err)
				}
				return
			}
			if msg == nil {
				want := io.EOF
				if len(rest) > 0 {
					want = io.ErrUnexpectedEOF
				}
				if len(msgs) != i || err != want {
					t.Fatalf("input ends after %d messages (%d bytes left); Reader returned %d messages, %v", i, len(rest), len(msgs), err)
				}
				return
			}
			if i >= len(msgs) || !bytes.Equal(msgs[i], msg) {
				t.Fatalf("message %d differs from Split", i)
			}
			rest = next
		}
	})
}
