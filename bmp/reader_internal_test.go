package bmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"testing"
)

// TestReaderBufferBound checks the buffer against the bound NewReader
// documents: it starts at min(16 KiB, max) and grows only to a validated
// message length.
func TestReaderBufferBound(t *testing.T) {
	hdr := func(length uint32) []byte {
		b := []byte{Version, 0, 0, 0, 0, byte(TypeRouteMonitoring)}
		binary.BigEndian.PutUint32(b[1:5], length)
		return b
	}
	t.Run("huge claim is rejected before allocating", func(t *testing.T) {
		r := NewReader(bytes.NewReader(hdr(math.MaxUint32)), 0)
		if _, _, err := r.Next(); !errors.Is(err, ErrLength) {
			t.Fatalf("Next = %v, want ErrLength", err)
		}
		if len(r.buf) != initialBuf {
			t.Fatalf("buffer is %d bytes, want %d", len(r.buf), initialBuf)
		}
	})
	t.Run("claim just under max grows to exactly the claim", func(t *testing.T) {
		const claim = 300 << 10
		r := NewReader(io.MultiReader(bytes.NewReader(hdr(claim)), bytes.NewReader(make([]byte, initialBuf+1000))), 0)
		if _, _, err := r.Next(); err != io.ErrUnexpectedEOF {
			t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
		}
		if len(r.buf) != claim {
			t.Fatalf("buffer is %d bytes, want %d", len(r.buf), claim)
		}
	})
	t.Run("small max caps the initial buffer", func(t *testing.T) {
		r := NewReader(bytes.NewReader(hdr(64)), 64)
		_, _, _ = r.Next()
		if len(r.buf) != 64 {
			t.Fatalf("buffer is %d bytes, want 64", len(r.buf))
		}
	})
	t.Run("max below header length still reads a header", func(t *testing.T) {
		r := NewReader(bytes.NewReader(hdr(6)), 3)
		if _, _, err := r.Next(); !errors.Is(err, ErrLength) {
			t.Fatalf("Next = %v, want ErrLength", err)
		}
		if len(r.buf) != HeaderLen {
			t.Fatalf("buffer is %d bytes, want %d", len(r.buf), HeaderLen)
		}
	})
}
