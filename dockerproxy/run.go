package dockerproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Env is the process environment docker mode runs in. Under dockerd,
// Stdout and Stderr are /dev/null.
type Env struct {
	Args     []string       // without the program name
	Status   io.WriteCloser // fd 3, the status pipe; nil when absent
	ListenFD *os.File       // fd 4; used only with -use-listen-fd
	Getenv   func(string) string
	Stdout   io.Writer
	Stderr   io.Writer
	Version  string
}

// status reports to dockerd exactly once: "0\n" when ready, or "1\n" and
// the error text. Nothing else is ever written to the pipe.
type status struct {
	once sync.Once
	w    io.WriteCloser
}

func (s *status) report(err error) {
	s.once.Do(func() {
		if s.w == nil {
			return
		}
		msg := "0\n"
		if err != nil {
			msg = "1\n" + err.Error()
		}
		io.WriteString(s.w, msg) // one write: dockerd reads 2 bytes, then the rest
		s.w.Close()
	})
}

// Run serves dockerd's invocation until ctx is done (SIGINT) and returns
// the exit code.
func Run(ctx context.Context, env Env) int {
	st := &status{w: env.Status}
	fail := func(err error) int {
		st.report(err)
		fmt.Fprintf(env.Stderr, "bmpproxy: %v\n", err)
		return 1
	}
	inv, err := ParseArgs(env.Args)
	if err != nil {
		return fail(err)
	}
	if inv.Version {
		fmt.Fprintln(env.Stdout, env.Version)
		return 0
	}
	if inv.Proto == "sctp" {
		return fail(errSCTP)
	}
	path, isDefault := env.Getenv("BMPPROXY_CONFIG"), false
	if path == "" {
		path, isDefault = conf.DefaultDockerRulesPath, true
	}
	rules, err := conf.LoadDockerRules(path, isDefault)
	if err != nil {
		return fail(err)
	}
	log, closeLog, err := newLogger(rules.Log)
	if err != nil {
		return fail(err)
	}
	defer closeLog()
	pp, rule := rules.Match(conf.DockerMapping{Proto: inv.Proto, Container: inv.Container, HostPort: inv.Host.Port()})
	log = log.With().Str("proto", inv.Proto).Stringer("host", inv.Host).Stringer("container", inv.Container).Logger()
	log.Info().Str("version", env.Version).Int("pid", os.Getpid()).Str("rules", path).Int("rule", rule).
		Str("proxy_protocol", string(pp)).Bool("listen_fd", inv.UseListenFD).Msg("starting in docker-proxy mode")

	if inv.Proto == "udp" {
		err = runUDP(ctx, env, inv, pp, log, st)
	} else {
		err = runTCP(ctx, env, inv, pp, rules, log, st)
	}
	if err != nil {
		log.Error().Err(err).Msg("stopped on error")
		return fail(err)
	}
	return 0
}

func runTCP(ctx context.Context, env Env, inv Invocation, pp conf.ProxyProtocol, rules *conf.DockerRules, log zerolog.Logger, st *status) error {
	cfg := &conf.Config{
		Listeners: []conf.Listener{{
			Name:          "docker",
			Listen:        []netip.AddrPort{inv.Host},
			Target:        conf.Target{Host: inv.Container.Addr().String(), Port: inv.Container.Port()},
			ProxyProtocol: pp,
		}},
		DrainTimeout: 0, // dockerd waits for the exit without a timeout: be prompt
		Log:          conf.Log{Level: rules.Log.Level, Format: rules.Log.Format},
	}
	cfg.ApplyDefaults()
	srv, err := proxy.New(cfg, proxy.Options{
		Logger: log,
		Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
			if inv.UseListenFD {
				return listenerFromFD(env.ListenFD)
			}
			return socket.ListenSingleStack(ctx, a)
		},
		Ready: func([]net.Addr) { st.report(nil) },
	})
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// listenerFromFD takes over the listening socket dockerd bound (fd 4).
func listenerFromFD(f *os.File) (net.Listener, error) {
	if f == nil {
		return nil, errors.New("-use-listen-fd: fd 4 is not open")
	}
	defer f.Close() // net.FileListener keeps a duplicate
	if err := isListening(f); err != nil {
		return nil, err
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("-use-listen-fd: fd 4: %w", err)
	}
	return ln, nil
}

func isListening(f *os.File) error {
	on, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("-use-listen-fd: fd 4 is not a socket: %w", err)
	}
	if on != 1 {
		return errors.New("-use-listen-fd: fd 4 is not a listening socket")
	}
	return nil
}

// newLogger opens the log destination the rules name: a file, syslog, or
// nothing.
func newLogger(l conf.DockerLog) (zerolog.Logger, func(), error) {
	level, err := zerolog.ParseLevel(l.Level)
	if err != nil {
		return zerolog.Nop(), func() {}, err
	}
	var w io.Writer
	closeFn := func() {}
	switch {
	case l.File != "":
		f, err := os.OpenFile(l.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return zerolog.Nop(), closeFn, fmt.Errorf("log file: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
		if l.Format == "console" {
			w = zerolog.ConsoleWriter{Out: f, TimeFormat: time.RFC3339, NoColor: true}
		}
	case l.Syslog == nil || *l.Syslog:
		sw, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "bmpproxy")
		if err != nil {
			if l.Syslog != nil {
				return zerolog.Nop(), closeFn, fmt.Errorf("syslog: %w", err)
			}
			return zerolog.Nop(), closeFn, nil // no syslog here, and none was asked for
		}
		w, closeFn = zerolog.SyslogLevelWriter(sw), func() { sw.Close() }
	default:
		return zerolog.Nop(), closeFn, nil
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), closeFn, nil
}
