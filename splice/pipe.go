package splice

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// pipe is a kernel pipe used as the splice intermediary. Both ends are
// non-blocking and close-on-exec.
type pipe struct {
	r, w int
	size int // capacity after F_SETPIPE_SZ, in bytes
	// data is the number of bytes spliced in and not yet spliced out. A
	// pipe is returned to the pool only when data == 0.
	data int
}

// ErrPipeTooSmall reports a pipe whose capacity stayed below the minimum,
// typically because pipe-user-pages-soft has been exceeded and the kernel
// hands out 2-page pipes. Splicing through them is slower than copying.
var ErrPipeTooSmall = errors.New("pipe capacity below minimum")

// newPipe creates a pipe and grows it to want bytes. It fails with
// ErrPipeTooSmall if the resulting capacity is below min.
func newPipe(want, min int) (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, want)
	if err != nil {
		// EPERM: want is above pipe-max-size for an unprivileged user, or
		// the user is over pipe-user-pages-soft. The pipe keeps its
		// default capacity, which may still be usable.
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("F_GETPIPE_SZ: %w", err)
		}
	}
	if size < min {
		p.close()
		return nil, fmt.Errorf("%w: %d bytes, want at least %d", ErrPipeTooSmall, size, min)
	}
	p.size = size
	return p, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
