package bmp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Split frames the first whole message at the start of b.
//
// It returns the message as msg and the bytes after it as rest. When b holds
// less than one whole message it returns nil, b, nil: the caller appends more
// bytes and calls again. A header field that is invalid is reported as soon
// as the bytes that hold it are present (the version after one byte, the
// length after five), with msg nil and rest == b; the stream cannot be
// resynchronised after that.
//
// Split never allocates or copies. msg and rest are subslices of b with
// len(msg)+len(rest) == len(b), and cap(msg) == len(msg), so appending to msg
// cannot overwrite rest. A nil, nil result means any complete header in b
// passed ParseHeader with this max, so a caller that buffers only until Split
// succeeds never holds more than max bytes (at least HeaderLen) of one
// message. max zero means MaxMessageLen.
func Split(b []byte, max uint32) (msg []byte, rest []byte, err error) {
	if err := checkPrefix(b, max); err != nil {
		return nil, b, err
	}
	if len(b) < HeaderLen {
		return nil, b, nil
	}
	n := binary.BigEndian.Uint32(b[1:5]) // validated: HeaderLen <= n <= max
	if uint64(len(b)) < uint64(n) {
		return nil, b, nil
	}
	return b[:n:n], b[n:], nil
}

// checkPrefix validates the header fields that are complete in b, which may
// be shorter than HeaderLen.
func checkPrefix(b []byte, max uint32) error {
	switch {
	case len(b) >= HeaderLen:
		_, err := ParseHeader(b, max)
		return err
	case len(b) >= 5:
		var h [HeaderLen]byte
		copy(h[:], b)
		h[5] = byte(TypeRouteMonitoring) // stand-in for the missing type byte
		_, err := ParseHeader(h[:], max)
		return err
	case len(b) >= 1 && b[0] != Version:
		return fmt.Errorf("%w %d (want %d)", ErrVersion, b[0], Version)
	}
	return nil
}

// Reader frames whole messages from a byte stream.
//
// Its buffer starts at min(16 KiB, max) bytes and grows only to the Length of
// a header that has already passed ParseHeader, so it never exceeds max
// (or HeaderLen, if max is smaller). Errors are sticky: once Next returns an
// error, every later call returns the same error.
type Reader struct {
	r     io.Reader
	max   uint32
	buf   []byte // buf[start:end] holds bytes read but not yet returned
	start int
	end   int
	rerr  error // read error seen after the bytes in buf; reported once they are used up
	err   error // sticky result of Next
}

// initialBuf is the Reader's starting buffer size; most BMP messages fit.
const initialBuf = 16 << 10

// maxEmptyReads bounds consecutive (0, nil) reads before Next gives up with
// io.ErrNoProgress.
const maxEmptyReads = 100

// NewReader returns a Reader that reads messages from r, rejecting any whose
// header claims more than max bytes. max zero means MaxMessageLen.
func NewReader(r io.Reader, max uint32) *Reader {
	return &Reader{r: r, max: limit(max)}
}

// Next returns the next whole message, header included, and its decoded
// header. The slice aliases the Reader's buffer and is valid only until the
// next call.
//
// At the end of the stream Next returns io.EOF if it ended between messages
// and io.ErrUnexpectedEOF if it ended inside one. An invalid header yields an
// error wrapping one of the package's sentinels; a read error is wrapped with
// "bmp: read:".
func (r *Reader) Next() (Header, []byte, error) {
	if r.err != nil {
		return Header{}, nil, r.err
	}
	if r.buf == nil {
		r.buf = make([]byte, max(HeaderLen, min(initialBuf, int64(r.max))))
	}
	empty := 0
	for {
		msg, _, err := Split(r.buf[r.start:r.end], r.max)
		if err != nil {
			r.err = err
			return Header{}, nil, err
		}
		if msg != nil {
			r.start += len(msg)
			return Header{Version: msg[0], Length: uint32(len(msg)), Type: Type(msg[5])}, msg, nil
		}
		if r.rerr != nil {
			r.err = r.endErr()
			return Header{}, nil, r.err
		}
		r.makeRoom()
		n, err := r.r.Read(r.buf[r.end:])
		if n < 0 || n > len(r.buf)-r.end {
			r.err = fmt.Errorf("bmp: read: reader returned invalid count %d", n)
			return Header{}, nil, r.err
		}
		r.end += n
		switch {
		case err != nil:
			r.rerr = err
		case n == 0:
			if empty++; empty >= maxEmptyReads {
				r.rerr = io.ErrNoProgress
			}
		default:
			empty = 0
		}
	}
}

// endErr maps the pending read error to Next's result once no whole message
// is left in the buffer.
func (r *Reader) endErr() error {
	if errors.Is(r.rerr, io.EOF) {
		if r.start == r.end {
			return io.EOF
		}
		return io.ErrUnexpectedEOF
	}
	return fmt.Errorf("bmp: read: %w", r.rerr)
}

// makeRoom moves the partial message in buf to the front and, if the buffer
// is full, grows it to the partial message's validated length. It is called
// only after Split asked for more bytes, so that length is at most max.
func (r *Reader) makeRoom() {
	if r.start > 0 {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	if r.end < len(r.buf) {
		return
	}
	// A full buffer holds at least HeaderLen bytes, so the header is complete
	// and Split has checked its length against max.
	need := binary.BigEndian.Uint32(r.buf[1:5])
	grown := make([]byte, need)
	copy(grown, r.buf[:r.end])
	r.buf = grown
}
