package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/bmpproxy/bmpproxy/dockerproxy"
	"golang.org/x/sys/unix"
)

// runDocker serves dockerd's invocation (userland-proxy-path). It takes
// fd 3 only if it is a pipe, and fd 4 only with -use-listen-fd and only if
// it is a socket: otherwise those numbers may belong to the Go runtime.
func runDocker(args []string, stdout, stderr io.Writer) int {
	env := dockerproxy.Env{
		Args:    args,
		Getenv:  os.Getenv,
		Stdout:  stdout,
		Stderr:  stderr,
		Version: versionString(),
	}
	if fdIs(3, unix.S_IFIFO) {
		env.Status = os.NewFile(3, "dockerd-status")
	}
	if slices.Contains(args, "-use-listen-fd") && fdIs(4, unix.S_IFSOCK) {
		env.ListenFD = os.NewFile(4, "dockerd-listener")
	}
	// SIGINT is how dockerd stops the proxy; SIGTERM is its parent-death
	// signal.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return dockerproxy.Run(ctx, env)
}

// fdIs reports whether fd is open and of the given file type.
func fdIs(fd int, typ uint32) bool {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == typ
}
