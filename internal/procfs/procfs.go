// Package procfs reads how processes relate, from /proc: a process's
// children, whether it still runs, when it started, and which processes
// hold its listening sockets.
//
// Nothing here is a snapshot: a process can start, exit or close a
// descriptor while it is read, and a process or descriptor that goes away
// meanwhile is skipped, not an error.
package procfs

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Children lists pid's child processes. Each thread lists the children
// it forked, and a Go program forks from any of its threads, so every
// thread is read.
func Children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// Stat is what this package uses of /proc/PID/stat.
type Stat struct {
	State byte // R, S, D, Z, ...: a zombie (Z) has exited and holds no descriptor
	// StartTime is when the process started, in clock ticks since boot;
	// only the order of two of them matters here.
	StartTime uint64
}

// ReadStat reads pid's /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	st, err := parseStat(string(b))
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// parseStat parses "pid (comm) state ppid ...". The comm may hold spaces
// and parentheses, so the fields are counted from the last ')'.
func parseStat(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, errors.New("no ')' after the command name")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3, the state
	const startTime = 22 - 3
	if len(f) <= startTime || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("%d fields after the command name, want at least %d", len(f), startTime+1)
	}
	t, err := strconv.ParseUint(f[startTime], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("start time: %w", err)
	}
	return Stat{State: f[0][0], StartTime: t}, nil
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	st, err := ReadStat(pid)
	return err == nil && st.State != 'Z'
}

// Sockets lists the inodes of the sockets pid holds, each once, in
// increasing order.
func Sockets(pid int) ([]uint64, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := socketInode(link); ok {
			out = append(out, ino)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// socketInode parses a descriptor's link, "socket:[12345]".
func socketInode(link string) (uint64, bool) {
	n, ok := strings.CutPrefix(link, "socket:[")
	if !ok || !strings.HasSuffix(n, "]") {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(n, "]"), 10, 64)
	return ino, err == nil
}

// ListeningTCP lists the inodes of the TCP sockets, IPv4 and IPv6, that
// pid holds and that listen. The state is read from /proc/PID/net/tcp
// and tcp6, which show pid's network namespace.
func ListeningTCP(pid int) ([]uint64, error) {
	held, err := Sockets(pid)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, name := range []string{"tcp", "tcp6"} {
		path := fmt.Sprintf("/proc/%d/net/%s", pid, name)
		f, err := os.Open(path)
		if errors.Is(err, fs.ErrNotExist) && name == "tcp6" {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, err
		}
		listening, err := parseListening(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, ino := range listening {
			if _, ok := slices.BinarySearch(held, ino); ok && !slices.Contains(out, ino) {
				out = append(out, ino)
			}
		}
	}
	return out, nil
}

// parseListening reads a /proc/net/tcp table and returns the inodes of
// the sockets in state 0A (LISTEN).
func parseListening(r io.Reader) ([]uint64, error) {
	const state, inode = 3, 9 // "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ..."
	sc := bufio.NewScanner(r)
	var out []uint64
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if line == 1 || len(f) == 0 {
			continue // the header
		}
		if len(f) <= inode {
			return nil, fmt.Errorf("line %d: %d fields, want at least %d", line, len(f), inode+1)
		}
		if f[state] != "0A" {
			continue
		}
		ino, err := strconv.ParseUint(f[inode], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: inode: %w", line, err)
		}
		out = append(out, ino)
	}
	return out, sc.Err()
}

// HoldersSince lists the live processes that started at or after since
// (a StartTime) and hold a socket among inodes, the earliest started
// first. Processes this one may not inspect are skipped.
func HoldersSince(inodes []uint64, since uint64) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	type holder struct {
		pid   int
		start uint64
	}
	var found []holder
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue // not a process
		}
		st, err := ReadStat(pid)
		if err != nil || st.State == 'Z' || st.StartTime < since {
			continue
		}
		held, err := Sockets(pid)
		if err != nil {
			continue
		}
		if slices.ContainsFunc(held, func(ino uint64) bool { return slices.Contains(inodes, ino) }) {
			found = append(found, holder{pid, st.StartTime})
		}
	}
	slices.SortFunc(found, func(a, b holder) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.pid, b.pid))
	})
	out := make([]int, len(found))
	for i, h := range found {
		out[i] = h.pid
	}
	return out, nil
}
