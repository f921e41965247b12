package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// errNotBMP wraps every pre-check refusal.
var errNotBMP = errors.New("not a BMP session")

// maxInitiation bounds the Initiation message the pre-check reads in
// full. Real ones are a few hundred bytes; a larger first message is
// passed on unread past its header.
const maxInitiation = 64 << 10

// routerInfo is what the pre-check learned from the first message.
type routerInfo struct {
	SysName, SysDescr string
	// TermReason is the reason of a Termination message, when one is
	// seen: only as the first message, since later ones travel on the
	// zero-copy path unread.
	TermReason string
}

// bmpPrecheck reads the first BMP common header from nc, after pre (bytes
// already read), within timeout. It refuses anything that is not BMP
// version 3 with a possible length and a known type. If the first message
// is an Initiation (or a Termination) of at most maxInitiation bytes, it
// is read whole and its sysName and sysDescr (or reason) returned. It
// returns every byte it read, pre included, for the caller to send after
// the PROXY header; nothing is read past the first message.
func bmpPrecheck(nc net.Conn, pre []byte, timeout time.Duration) ([]byte, routerInfo, error) {
	var info routerInfo
	if err := nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return pre, info, err
	}
	defer nc.SetReadDeadline(time.Time{})
	buf := append([]byte(nil), pre...)
	fill := func(n int) error {
		if len(buf) >= n {
			return nil
		}
		need := make([]byte, n-len(buf))
		m, err := io.ReadFull(nc, need)
		buf = append(buf, need[:m]...)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("%w: no BMP message within %s (%d bytes)", errNotBMP, timeout, len(buf))
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("%w: closed after %d bytes", errNotBMP, len(buf))
		}
		return err
	}
	if err := fill(bmp.HeaderLen); err != nil {
		return buf, info, err
	}
	h, err := bmp.ParseHeader(buf, 0)
	if err != nil {
		return buf, info, fmt.Errorf("%w: %w", errNotBMP, err)
	}
	if h.Type != bmp.TypeInitiation && h.Type != bmp.TypeTermination || h.Length > maxInitiation {
		return buf, info, nil
	}
	if err := fill(int(h.Length)); err != nil {
		return buf, info, err
	}
	if h.Type == bmp.TypeTermination {
		term, err := bmp.ParseTermination(buf[:h.Length])
		if err != nil {
			return buf, info, fmt.Errorf("%w: %w", errNotBMP, err)
		}
		if term.HasReason {
			info.TermReason = term.ReasonString()
		}
		return buf, info, nil
	}
	ini, err := bmp.ParseInitiation(buf[:h.Length])
	if err != nil {
		return buf, info, fmt.Errorf("%w: %w", errNotBMP, err)
	}
	info.SysName, info.SysDescr = ini.SysName, ini.SysDescr
	return buf, info, nil
}
