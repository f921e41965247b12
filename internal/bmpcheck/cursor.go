package bmpcheck

import (
	"encoding/binary"
	"fmt"
)

// ParseError is a stream that Parse or ParseAll refused.
type ParseError struct {
	Offset        int     // byte offset in the stream of the field at fault
	Message       int     // index of the BMP message that holds it, from 0
	MessageOffset int     // byte offset of that message
	Type          MsgType // that message's type, unless NoHeader
	NoHeader      bool    // the stream ends within the message's common header
	Reason        string
}

func (e *ParseError) Error() string {
	what := e.Type.String()
	if e.NoHeader {
		what = "incomplete header"
	}
	return fmt.Sprintf("bmpcheck: offset %d: message %d (%s at offset %d): %s",
		e.Offset, e.Message, what, e.MessageOffset, e.Reason)
}

// fault is a parse failure at an offset; the message loop wraps it in a
// ParseError.
type fault struct {
	offset int
	reason string
}

func (f *fault) Error() string { return fmt.Sprintf("offset %d: %s", f.offset, f.reason) }

// cursor reads big-endian fields from b, knowing the stream offset of b[0].
type cursor struct {
	b    []byte
	pos  int
	base int
}

func (c *cursor) offset() int { return c.base + c.pos }
func (c *cursor) left() int   { return len(c.b) - c.pos }
func (c *cursor) empty() bool { return c.pos == len(c.b) }

func (c *cursor) errorf(format string, args ...any) error {
	return &fault{offset: c.offset(), reason: fmt.Sprintf(format, args...)}
}

// need fails unless n more bytes are there to read as what.
func (c *cursor) need(n int, what string) error {
	if n > c.left() {
		return c.errorf("%s needs %d bytes, %d left", what, n, c.left())
	}
	return nil
}

func (c *cursor) bytes(n int, what string) ([]byte, error) {
	if err := c.need(n, what); err != nil {
		return nil, err
	}
	v := c.b[c.pos : c.pos+n]
	c.pos += n
	return v, nil
}

// sub reads n bytes as a cursor of their own.
func (c *cursor) sub(n int, what string) (*cursor, error) {
	start := c.offset()
	v, err := c.bytes(n, what)
	if err != nil {
		return nil, err
	}
	return &cursor{b: v, base: start}, nil
}

// rest reads what is left as a cursor of its own.
func (c *cursor) rest() *cursor {
	r, _ := c.sub(c.left(), "")
	return r
}

func (c *cursor) u8(what string) (uint8, error) {
	v, err := c.bytes(1, what)
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

func (c *cursor) u16(what string) (uint16, error) {
	v, err := c.bytes(2, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(v), nil
}

func (c *cursor) u32(what string) (uint32, error) {
	v, err := c.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(v), nil
}
