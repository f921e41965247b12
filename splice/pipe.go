package splice

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

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

// newPipe creates a pipe and grows it toward want bytes. If the kernel
// refuses (EPERM: above pipe-max-size, or the user is near
// pipe-user-pages-soft), it asks for half as much, down to min. It fails
// with ErrPipeTooSmall if the capacity stays below min.
func newPipe(want, min int) (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	p := &pipe{r: fds[0], w: fds[1]}
	size := 0
	for try := want; try >= min; try /= 2 {
		if got, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, try); err == nil {
			size = got
			break
		}
	}
	if size == 0 {
		// Every F_SETPIPE_SZ failed; the pipe keeps its default capacity,
		// which is 2 pages once the user is over pipe-user-pages-soft.
		got, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("F_GETPIPE_SZ: %w", err)
		}
		size = got
	}
	if size < min {
		p.close()
		return nil, fmt.Errorf("%w: %d bytes, want at least %d", ErrPipeTooSmall, size, min)
	}
	p.size = size
	return p, nil
}

// pipeBudgetExempt reports whether this process may exceed
// pipe-user-pages-soft: it has CAP_SYS_RESOURCE or CAP_SYS_ADMIN.
func pipeBudgetExempt() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE|1<<unix.CAP_SYS_ADMIN) != 0
		}
	}
	return false
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
