package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/procfs"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat times. It is 100 on
// every Linux architecture Go supports.
const clockTick = 100

// cpuTime returns the CPU time (user + system) a process has used, counting
// its threads and the children it has reaped (cutime, cstime), from
// /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may contain spaces: split
	// after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat field %d: %w", pid, k+3, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// footprint returns the RSS (KiB) and open fds of pid and its children.
func footprint(pid int) (rss int64, fds int, err error) {
	if rss, err = rssKiB(pid); err != nil {
		return 0, 0, err
	}
	fds, err = fdCount(pid)
	return rss, fds, err
}

// rssKiB returns the resident set size of pid and its live children, in
// KiB, from /proc/PID/status.
func rssKiB(pid int) (int64, error) {
	var total int64
	for _, p := range append([]int{pid}, procfs.Children(pid)...) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				if err != nil {
					return 0, err
				}
				total += n
			}
		}
	}
	return total, nil
}

// fdCount returns the number of open fds of pid and its live children.
func fdCount(pid int) (int, error) {
	total := 0
	for _, p := range append([]int{pid}, procfs.Children(pid)...) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		if err != nil {
			if p == pid {
				return 0, err
			}
			continue
		}
		total += len(ents)
	}
	return total, nil
}

// waitNoChildren waits up to d for pid's children to exit, so that their
// CPU time is counted in cutime and cstime.
func waitNoChildren(pid int, d time.Duration) {
	deadline := time.Now().Add(d)
	for len(procfs.Children(pid)) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// fineCPUTime returns the CPU time pid's threads have used, to the
// nanosecond, from /proc/PID/task/*/schedstat (the time on a CPU of each
// thread alive now). For workloads too short for the 10 ms ticks of
// cpuTime; 0 without a process.
func fineCPUTime(pid int) (time.Duration, error) {
	if pid == 0 {
		return 0, nil
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/task/%s/schedstat: %w", pid, t.Name(), err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}
