package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"

	"github.com/bmpproxy/bmpproxy/admin"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/bmpproxy/bmpproxy/reaper"
	"github.com/bmpproxy/bmpproxy/sdnotify"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// serveAction is the main command: serve the configuration until a stop
// signal, or until a successor took over.
func serveAction(stdout, stderr io.Writer) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.Bool("version") {
			fmt.Fprintln(stdout, versionString())
			return nil
		}
		return (&serve{c: c, stderr: stderr}).run()
	}
}

// serve is one run of the main command, as named phases in the order run
// calls them. A phase sets the fields it names; later phases read them.
type serve struct {
	c      *cli.Context
	stderr io.Writer

	succ  *successorState             // successor: the predecessor's handover, or nil
	exe   string                      // configure: this binary, for upgrades
	src   *source                     // configure; reloads read it again
	cfg   *conf.Config                // configure
	token atomic.Pointer[admin.Token] // configure; swapped by reloads
	log   zerolog.Logger              // logging

	notify    sdnotify.Notifier       // environment
	initSock  *reaper.Socket          // environment: PID 1's, for its successors
	inherited map[string]net.Listener // environment: sockets systemd bound, by address

	srv   *proxy.Server // build
	ready chan struct{} // build: closed once every listener accepts
	up    *upgrader     // serve
}

// run runs the phases. A successor tells its predecessor why it cannot
// take over, whatever phase stops it.
func (s *serve) run() (err error) {
	if s.succ, err = successorFromEnv(); err != nil {
		return err
	}
	defer func() { s.succ.fail(err) }()
	if err := s.configure(); err != nil {
		return err
	}
	if err := s.logging(); err != nil {
		return err
	}
	ctx, stopSignals := s.signals()
	defer stopSignals()
	s.starting()
	if err := s.environment(); err != nil {
		return s.cannotStart(err)
	}
	if s.initSock != nil {
		defer s.initSock.Close()
	}
	if err := s.build(); err != nil {
		return s.cannotStart(err)
	}
	return s.serve(ctx, stopSignals)
}

// configure finds this binary and loads the configuration, from the file
// or the flags, and the admin token it names.
func (s *serve) configure() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary's path: %w", err)
	}
	s.exe = exe
	if s.c.NArg() > 0 {
		return usagef("unexpected argument %q", s.c.Args().First())
	}
	s.src = newSource(s.c)
	if s.cfg, err = s.src.load(); err != nil {
		return err
	}
	// Read once here, and again on each SIGHUP reload.
	tok, err := adminToken(s.cfg, s.src.tokenError)
	if err != nil {
		return configError{err}
	}
	s.token.Store(tok)
	return nil
}

// logging builds the process logger.
func (s *serve) logging() error {
	log, err := newLogger(s.cfg.Log, s.stderr)
	if err != nil {
		return usagef("%v", err)
	}
	s.log = log
	return nil
}

// signals returns a context that SIGINT or SIGTERM ends. After the first
// signal, a second one ends the process at once.
func (s *serve) signals() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(s.c.Context, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// starting logs the start: the version, the config file and the
// settings that flags or variables override in it, as they were given.
func (s *serve) starting() {
	ev := s.log.Info().Str("version", versionString()).Int("pid", os.Getpid()).Str("config", s.src.path())
	if ovs := s.src.overrides(); s.src.path() != "" && len(ovs) > 0 {
		d := zerolog.Dict()
		for _, f := range ovs {
			d.Str(f.Path, f.givenAs())
		}
		ev.Dict("overrides", d)
	}
	ev.Bool("successor", s.succ != nil).Msg("starting")
}

// cannotStart logs why this process cannot serve and returns err.
func (s *serve) cannotStart(err error) error {
	return s.failed("cannot start", err)
}

// failed logs err as an error line with msg, and returns it marked as
// logged, so that it is not reported again; or, when the log level hides
// errors, returns it as it is.
func (s *serve) failed(msg string, err error) error {
	ev := s.log.Error()
	if !ev.Enabled() {
		return err
	}
	ev.Err(err).Msg(msg)
	return loggedError{err}
}

// loggedError is an error that the process logger has reported already.
type loggedError struct{ err error }

func (e loggedError) Error() string { return e.err.Error() }
func (e loggedError) Unwrap() error { return e.err }

// environment prepares what the process's surroundings ask for: the
// return routing of transparent listeners, systemd's notify socket and
// its sockets, and, as a container's PID 1, the socket through which
// successors report to this process (package reaper), which must outlive
// its handover.
func (s *serve) environment() error {
	if s.cfg.TransparentSetup != "" {
		if err := applyTransparentSetup(s.cfg, s.log); err != nil {
			return err
		}
	}
	s.notify = sdnotify.FromEnv(os.Getenv)
	if os.Getpid() == 1 {
		sock, err := reaper.Listen()
		if err != nil {
			return err
		}
		s.initSock = sock
		os.Setenv("NOTIFY_SOCKET", sock.Addr)
	}
	inherited, err := sdnotify.Listeners(os.Getenv, os.Unsetenv)
	if err != nil {
		return err
	}
	s.inherited = inherited
	return nil
}

// build makes the proxy server, adopting the predecessor's state if
// there is one. Its listeners take the sockets systemd bound where the
// addresses match; the others are bound here.
func (s *serve) build() error {
	s.ready = make(chan struct{})
	opts := proxy.Options{
		Logger: s.log,
		Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
			if ln, ok := s.inherited[a.String()]; ok {
				delete(s.inherited, a.String())
				s.log.Info().Stringer("addr", a).Msg("using the socket passed by systemd")
				return ln, nil
			}
			return socket.Listen(ctx, a)
		},
		LogFor: func(l conf.Log) zerolog.Logger {
			lg, err := newLogger(l, s.stderr)
			if err != nil { // validated already; never here
				return s.log
			}
			return lg
		},
		Ready: func([]net.Addr) {
			close(s.ready)
			for a, ln := range s.inherited { // sockets the config does not name
				s.log.Warn().Str("addr", a).Msg("closing a socket passed by systemd that no listener uses")
				ln.Close()
			}
		},
	}
	if s.succ != nil {
		opts.Inherit, opts.Takeover = s.succ.snap, s.succ.takeover
	}
	srv, err := proxy.New(s.cfg, opts)
	if err != nil {
		return err
	}
	s.srv = srv
	return nil
}

// serve runs the proxy until it stops or hands over, with its reloads,
// upgrades, readiness notifications and admin listener around it; a
// failing admin listener stops the proxy too.
func (s *serve) serve(ctx context.Context, stopSignals func()) error {
	reloads := watchReloads(ctx, s.srv, s.src, &s.token, s.log, s.notify)
	defer reloads()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.up = &upgrader{exe: s.exe, args: os.Args, srv: s.srv, log: s.log, notify: s.notify, ctx: runCtx}
	stopUpgrades := s.up.watchUpgrades(runCtx)
	defer stopUpgrades()
	notified := s.tellManager(runCtx)
	defer func() { cancel(); <-notified }()
	adminDone := startAdmin(runCtx, cancel, s.adminServer(), s.ready)

	err := s.srv.Run(runCtx)
	s.succ.closeUnused()
	if errors.Is(err, proxy.ErrHandedOver) {
		cancel()
		<-adminDone
		return s.handOver(func() { stopUpgrades(); reloads(); stopSignals() })
	}
	if err != nil {
		return s.cannotStart(err)
	}
	cancel()
	if err := <-adminDone; err != nil {
		return s.failed("stopped: the admin listener failed", err)
	}
	return nil
}

// tellManager tells the service manager "ready" once every listener
// accepts, and "stopping" once ctx ends, unless a successor took over: it
// is the main process then. The returned channel closes when it is done.
func (s *serve) tellManager(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-s.ready:
			s.notify.Ready()
		case <-ctx.Done():
			return
		}
		<-ctx.Done()
		if !s.up.handedOver() {
			s.notify.Stopping()
		}
	}()
	return done
}

// adminServer is the admin listener. Its socket is the predecessor's when
// one was passed for its address, and pausable, so that an upgrade can
// pass it on without taking a request it would not answer.
func (s *serve) adminServer() *admin.Server {
	return &admin.Server{
		Addr:    s.cfg.Admin,
		Proxy:   s.srv,
		Logger:  s.log,
		Version: versionString(),
		Upgrade: func(context.Context) (int, string, error) { return s.up.upgrade() },
		Pool:    s.srv,
		Token:   s.token.Load,
		Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
			ln, ok := s.succ.adminListener(a)
			if !ok {
				var err error
				if ln, err = socket.Listen(ctx, a); err != nil {
					return nil, err
				}
			}
			tl, ok := ln.(*net.TCPListener)
			if !ok {
				return ln, nil // not ours to pass on
			}
			pl := newPausableListener(tl)
			s.up.admin.Store(pl)
			return pl, nil
		},
	}
}

// handOver ends this process's part once a successor took over. As PID
// 1 it stays, as the successors' init, after stopWatching gives them the
// signals; otherwise it exits.
func (s *serve) handOver(stopWatching func()) error {
	if s.initSock == nil {
		s.log.Info().Int64("successor_pid", s.up.successor.Load()).Msg("handed over; exiting")
		return nil
	}
	stopWatching()
	debug.FreeOSMemory() // PID 1 holds nothing now but this loop
	if code := s.initSock.Serve(int(s.up.successor.Load()), s.log); code != 0 {
		return exitStatus(code)
	}
	return nil
}

// startAdmin runs the admin listener, if its address is set, once the
// proxy is ready; the proxy's Stats may not be read before. If the admin
// listener cannot be bound, it logs why and cancels the proxy through
// stop. The returned channel yields its result after ctx is done.
func startAdmin(ctx context.Context, stop context.CancelFunc, as *admin.Server, ready <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	if !as.Addr.IsValid() {
		done <- nil
		return done
	}
	go func() {
		select {
		case <-ready:
		case <-ctx.Done():
			done <- nil
			return
		}
		err := as.Run(ctx)
		if err != nil {
			stop()
		}
		done <- err
	}()
	return done
}

// adminToken reads the admin token file of cfg, if it names one. An error
// is named by named, after the setting that gave the file.
func adminToken(cfg *conf.Config, named func(error) error) (*admin.Token, error) {
	if cfg.AdminTokenFile == "" {
		return nil, nil
	}
	tok, err := admin.ReadTokenFile(cfg.AdminTokenFile)
	if err != nil {
		return nil, named(err)
	}
	return admin.NewToken(tok), nil
}

// watchReloads reloads the config file of src into srv on every SIGHUP
// until ctx is done, with the same overrides, and its admin token file
// into token. A token file that cannot be read fails the whole reload:
// nothing changes. The returned function stops it and waits for it.
func watchReloads(ctx context.Context, srv *proxy.Server, src *source, token *atomic.Pointer[admin.Token], log zerolog.Logger, notify sdnotify.Notifier) (stop func()) {
	return onSignal(ctx, syscall.SIGHUP, func(ctx context.Context) bool {
		path := src.path()
		if path == "" {
			log.Warn().Msg("SIGHUP ignored: there is no --config file to reload")
			return true
		}
		log.Info().Str("config", path).Msg("SIGHUP: reloading")
		notify.Reloading()
		cfg, err := src.loadFile()
		var tok *admin.Token
		if err == nil {
			tok, err = adminToken(cfg, src.tokenError)
		}
		if err != nil {
			srv.ReloadFailed(err)
		} else {
			srv.Reload(ctx, cfg) // logs its own outcome
			if old := token.Swap(tok); !old.Equal(tok) {
				log.Info().Str("admin_token_file", cfg.AdminTokenFile).Msg("the admin token changed")
			}
		}
		notify.Ready()
		return true
	})
}
