package inspect

import (
	"fmt"
	"io"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// Scan reads r to its end and returns a Record with the payload fields set:
// Bytes always, and BMPTypes, SysName, SysDescr, TermReason and BMPError when
// the first byte is the BMP version (3). Other streams are only counted.
//
// Decoding stops at the first invalid message, which is recorded in BMPError,
// and counting goes on to the end. A stream that ends inside a message is a
// BMPError too. A read error other than io.EOF ends the scan and is recorded
// in Error.
//
// Besides io.Copy's 32 KiB buffer, Scan holds at most one partial message of
// at most maxMessage bytes; maxMessage zero means bmp.MaxMessageLen.
func Scan(r io.Reader, maxMessage uint32) Record {
	rec := Record{BMPTypes: []TypeCount{}}
	if maxMessage == 0 {
		maxMessage = bmp.MaxMessageLen
	}
	s := &scanner{rec: &rec, max: maxMessage}
	if _, err := io.Copy(s, r); err != nil {
		rec.Error = fmt.Sprintf("read: %v", err)
		return rec
	}
	s.finish()
	return rec
}

// scanState says what the scanner does with the next bytes.
type scanState uint8

const (
	undecided scanState = iota // no byte seen yet
	decoding                   // stream started with the BMP version
	counting                   // not BMP, or decoding stopped
)

// scanner is the io.Writer behind Scan. Its invariant: pend holds the start
// of exactly one message and is shorter than that message; once it has
// HeaderLen bytes, that header passed bmp.Split, so len(pend) < max.
type scanner struct {
	rec   *Record
	max   uint32
	state scanState
	pend  []byte
}

// Write counts p and decodes it; it never fails.
func (s *scanner) Write(p []byte) (int, error) {
	n := len(p)
	s.rec.Bytes += int64(n)
	if s.state == undecided && len(p) > 0 {
		s.state = counting
		if p[0] == bmp.Version {
			s.state = decoding
		}
	}
	for len(p) > 0 && s.state == decoding {
		if len(s.pend) == 0 {
			p = s.split(p)
		} else {
			p = s.complete(p)
		}
	}
	return n, nil
}

// split decodes the whole messages at the start of p, in place, and keeps a
// trailing partial message in pend. It returns what is left of p: nothing,
// unless decoding stopped.
func (s *scanner) split(p []byte) []byte {
	for len(p) > 0 {
		msg, rest, err := bmp.Split(p, s.max)
		if err != nil {
			s.fail(err)
			return nil
		}
		if msg == nil {
			// p is shorter than its (validated) message: keep it.
			s.pend = append(s.pend, p...)
			return nil
		}
		if !s.message(msg) {
			return nil
		}
		p = rest
	}
	return nil
}

// complete moves from p to pend only the bytes the pending message still
// needs, so pend never exceeds one message, and decodes it once whole. It
// returns the unused rest of p.
func (s *scanner) complete(p []byte) []byte {
	want := bmp.HeaderLen
	if len(s.pend) >= bmp.HeaderLen {
		// Split validated this header when pend first reached HeaderLen.
		h, err := bmp.ParseHeader(s.pend, s.max)
		if err != nil {
			s.fail(err)
			return nil
		}
		want = int(h.Length)
	}
	n := min(want-len(s.pend), len(p))
	s.pend = append(s.pend, p[:n]...)
	msg, _, err := bmp.Split(s.pend, s.max)
	switch {
	case err != nil:
		s.fail(err)
		return nil
	case msg != nil:
		s.pend = s.pend[:0]
		s.message(msg)
	}
	return p[n:]
}

// message records one whole message and reports whether decoding goes on.
func (s *scanner) message(msg []byte) bool {
	typ := bmp.Type(msg[5])
	s.count(typ)
	switch typ {
	case bmp.TypeInitiation:
		in, err := bmp.ParseInitiation(msg)
		if err != nil {
			s.fail(err)
			return false
		}
		if in.SysName != "" {
			s.rec.SysName = in.SysName
		}
		if in.SysDescr != "" {
			s.rec.SysDescr = in.SysDescr
		}
	case bmp.TypeTermination:
		t, err := bmp.ParseTermination(msg)
		if err != nil {
			s.fail(err)
			return false
		}
		if t.HasReason {
			s.rec.TermReason = t.ReasonString()
		}
	}
	return true
}

// count adds one message of type typ. There are at most seven known types,
// so a linear search is enough.
func (s *scanner) count(typ bmp.Type) {
	name := typ.String()
	for i := range s.rec.BMPTypes {
		if s.rec.BMPTypes[i].Type == name {
			s.rec.BMPTypes[i].Count++
			return
		}
	}
	s.rec.BMPTypes = append(s.rec.BMPTypes, TypeCount{Type: name, Count: 1})
}

// fail records why decoding stopped and drops the pending bytes.
func (s *scanner) fail(err error) {
	s.rec.BMPError = err.Error()
	s.state = counting
	s.pend = nil
}

// finish reports a stream that ended inside a message.
func (s *scanner) finish() {
	if s.state != decoding || len(s.pend) == 0 {
		return
	}
	var err error
	if len(s.pend) < bmp.HeaderLen {
		err = fmt.Errorf("bmp: stream ended after %d of %d header bytes: %w", len(s.pend), bmp.HeaderLen, io.ErrUnexpectedEOF)
	} else {
		h, _ := bmp.ParseHeader(s.pend, s.max) // validated by Split
		err = fmt.Errorf("bmp: stream ended after %d of %d bytes of a %s message: %w", len(s.pend), h.Length, h.Type, io.ErrUnexpectedEOF)
	}
	s.fail(err)
}
