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
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/admin"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/dockerproxy"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/bmpproxy/bmpproxy/reaper"
	"github.com/bmpproxy/bmpproxy/sdnotify"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // a runtime failure: a port in use, a listener that cannot open
	exitUsage = 2 // bad flags, bad values, bad environment variables
)

// exitStatus is an exit code passed on as it is: PID 1's, after the
// process it handed over to exited (package reaper).
type exitStatus int

func (e exitStatus) Error() string { return "exit status " + strconv.Itoa(int(e)) }

// usageError marks an error as the user's invocation being wrong.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{msg: fmt.Sprintf(format, args...)}
}

// run executes the command line and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if dockerproxy.IsInvocation(args[1:]) {
		return runDocker(args[1:], stdout, stderr)
	}
	app := newApp(stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "bmpproxy: %s (see 'bmpproxy --help')\n", ue.msg)
		return exitUsage
	}
	var ce configError
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "bmpproxy: %v\n", ce.err)
		return exitUsage
	}
	var es exitStatus
	if errors.As(err, &es) {
		return int(es)
	}
	fmt.Fprintf(stderr, "bmpproxy: %v\n", err)
	return exitError
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "bmpproxy",
		Usage: "dual-stack TCP proxy that tells BMP collectors the real router address",
		UsageText: "bmpproxy --listen '[::]:5000' --target collector:5000 [options]\n" +
			"bmpproxy --config FILE\n" +
			"bmpproxy check --config FILE\n" +
			"bmpproxy inspect --listen ADDR\n" +
			"bmpproxy upgrade --pid PID | --admin HOST:PORT",
		Description: "bmpproxy accepts BMP sessions from routers over IPv4 and IPv6 on one socket and forwards\n" +
			"each to the collector, prefixed with a PROXY protocol header (v2 by default) that carries\n" +
			"the router's real address. Bytes move with splice(2). Every flag can also be set through\n" +
			"the environment variable shown beside it.\n\n" +
			"With --config, the listeners and every other setting come from a YAML file instead\n" +
			"(see examples/openbmp-aio.yaml); SIGHUP reloads it without touching open connections.\n\n" +
			"SIGUSR2 (or 'bmpproxy upgrade', or POST /upgrade on the admin listener) hands every listener\n" +
			"and open session to the binary now at this one's path, without closing any (docs/upgrade.md).\n\n" +
			"Exit status: 0 after a clean stop (SIGINT or SIGTERM), 1 on a runtime failure, 2 on bad usage.",
		Writer:      stdout,
		ErrWriter:   stderr,
		HideVersion: true,
		Flags:       serveFlags(),
		Action:      serveAction(stdout, stderr),
		Commands: []*cli.Command{
			checkCommand(stdout, stderr),
			inspectCommand(stdout, stderr),
			transparentSetupCommand(stdout, stderr),
			upgradeCommand(stdout, stderr),
			healthcheckCommand(stdout, stderr),
		},
		OnUsageError:         onUsageError,
		ExitErrHandler:       func(*cli.Context, error) {}, // run maps errors to exit codes
		EnableBashCompletion: true,                         // contrib/completion asks --generate-bash-completion
	}
}

// serveFlags are --config, --version and the flags of the settings that
// conf describes, which a config file holds instead.
func serveFlags() []cli.Flag {
	config := &cli.StringFlag{
		Name:    "config",
		Aliases: []string{"c"},
		Usage:   "YAML file with the listeners and settings; not combined with the flags below",
		EnvVars: []string{"BMPPROXY_CONFIG"},
	}
	version := &cli.BoolFlag{
		Name:  "version",
		Usage: "print the version and exit",
	}
	return append(append([]cli.Flag{config}, newSettingFlags()...), version)
}

// loadConfig returns the configuration from --config, or from the flags.
func loadConfig(c *cli.Context) (*conf.Config, error) {
	if c.NArg() > 0 {
		return nil, usagef("unexpected argument %q", c.Args().First())
	}
	flags := settingFlags(c.App.Flags)
	path := c.String("config")
	if path == "" {
		return configFromFlags(flags)
	}
	var set []string
	for _, f := range flags {
		if f.IsSet() {
			set = append(set, "--"+f.Name)
		}
	}
	if len(set) > 0 {
		return nil, usagef("--config cannot be combined with %s: the file holds those settings", strings.Join(set, ", "))
	}
	cfg, err := conf.Load(path)
	if err != nil {
		return nil, configError{err}
	}
	return cfg, nil
}

// configError is a configuration file that does not load. It is bad
// usage, but its message has a line per problem.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// configFromFlags builds and validates a configuration from the command
// line. Errors name the flag.
func configFromFlags(flags []*settingFlag) (*conf.Config, error) {
	cfg := conf.FlagConfig()
	for _, f := range flags {
		if err := f.apply(cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.Complete(); err != nil {
		return nil, usagef("%s", flagPaths(flags, err.Error()))
	}
	return cfg, nil
}

func serveAction(stdout, stderr io.Writer) cli.ActionFunc {
	return func(c *cli.Context) (err error) {
		if c.Bool("version") {
			fmt.Fprintln(stdout, versionString())
			return nil
		}
		// A successor (docs/upgrade.md) tells its predecessor why it
		// cannot take over, whatever stops it before that.
		succ, err := successorFromEnv()
		if err != nil {
			return err
		}
		defer func() { succ.fail(err) }()
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this binary's path: %w", err)
		}
		cfg, err := loadConfig(c)
		if err != nil {
			return err
		}
		log, err := newLogger(cfg.Log, stderr)
		if err != nil {
			return usagef("%v", err)
		}
		ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		go func() {
			// After the first signal, a second one ends the process at once.
			<-ctx.Done()
			stop()
		}()
		log.Info().Str("version", versionString()).Int("pid", os.Getpid()).Str("config", c.String("config")).
			Bool("successor", succ != nil).Msg("starting")
		cannotStart := func(err error) error {
			log.Error().Err(err).Msg("cannot start")
			return err
		}
		if cfg.TransparentSetup != "" {
			if err := applyTransparentSetup(cfg, log); err != nil {
				return cannotStart(err)
			}
		}
		notify := sdnotify.FromEnv(os.Getenv)
		// As a container's PID 1, this process must outlive its
		// handover: successors report to it (package reaper).
		var initSock *reaper.Socket
		if os.Getpid() == 1 {
			if initSock, err = reaper.Listen(); err != nil {
				return cannotStart(err)
			}
			defer initSock.Close()
			os.Setenv("NOTIFY_SOCKET", initSock.Addr)
		}
		inherited, err := sdnotify.Listeners(os.Getenv, os.Unsetenv)
		if err != nil {
			return cannotStart(err)
		}
		srv := &proxy.Server{
			Config: cfg,
			Logger: log,
			Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
				// A socket systemd bound for us (socket activation) is
				// used as it is; the others are bound here.
				if ln, ok := inherited[a.String()]; ok {
					delete(inherited, a.String())
					log.Info().Stringer("addr", a).Msg("using the socket passed by systemd")
					return ln, nil
				}
				return socket.Listen(ctx, a)
			},
			LogFor: func(l conf.Log) zerolog.Logger {
				lg, err := newLogger(l, stderr)
				if err != nil { // validated already; never here
					return log
				}
				return lg
			},
		}
		if succ != nil {
			srv.Inherit, srv.Takeover = succ.snap, succ.takeover
		}
		reloads := watchReloads(ctx, srv, c.String("config"), log, notify)
		defer reloads()
		// The admin listener, if it fails, stops the proxy through runCtx.
		runCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		up := &upgrader{exe: exe, args: os.Args, srv: srv, log: log, notify: notify, ctx: runCtx}
		stopUpgrades := up.watchUpgrades(runCtx)
		defer stopUpgrades()
		ready := make(chan struct{})
		srv.Ready = func([]net.Addr) {
			close(ready)
			for a, ln := range inherited { // sockets the config does not name
				log.Warn().Str("addr", a).Msg("closing a socket passed by systemd that no listener uses")
				ln.Close()
			}
		}
		notified := make(chan struct{})
		go func() { // tells systemd: ready, then stopping
			defer close(notified)
			select {
			case <-ready:
				notify.Ready()
			case <-runCtx.Done():
				return
			}
			<-runCtx.Done()
			if !up.handedOver() { // the successor is the main process now
				notify.Stopping()
			}
		}()
		defer func() { cancel(); <-notified }()
		adminDone := startAdmin(runCtx, cancel, &admin.Server{
			Addr:    cfg.Admin,
			Proxy:   srv,
			Logger:  log,
			Version: versionString(),
			Upgrade: func(context.Context) (int, string, error) { return up.upgrade() },
			Listen: func(ctx context.Context, a netip.AddrPort) (net.Listener, error) {
				ln, ok := succ.adminListener(a)
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
				up.admin.Store(pl)
				return pl, nil
			},
		}, ready)
		err = srv.Run(runCtx)
		succ.closeUnused()
		if errors.Is(err, proxy.ErrHandedOver) {
			cancel()
			<-adminDone
			if initSock != nil {
				// Signals are the serving process's now.
				stopUpgrades()
				reloads()
				stop()
				debug.FreeOSMemory() // PID 1 holds nothing now but this loop
				if code := initSock.Serve(int(up.successor.Load()), log); code != 0 {
					return exitStatus(code)
				}
				return nil
			}
			log.Info().Int64("successor_pid", up.successor.Load()).Msg("handed over; exiting")
			return nil
		}
		if err != nil {
			return cannotStart(err)
		}
		cancel()
		if err := <-adminDone; err != nil {
			log.Error().Err(err).Msg("stopped: the admin listener failed")
			return err
		}
		return nil
	}
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

// watchReloads reloads the config file at path into srv on every SIGHUP
// until ctx is done. The returned function stops it and waits for it.
func watchReloads(ctx context.Context, srv *proxy.Server, path string, log zerolog.Logger, notify sdnotify.Notifier) (stop func()) {
	return onSignal(ctx, syscall.SIGHUP, func(ctx context.Context) bool {
		if path == "" {
			log.Warn().Msg("SIGHUP ignored: there is no --config file to reload")
			return true
		}
		log.Info().Str("config", path).Msg("SIGHUP: reloading")
		notify.Reloading()
		cfg, err := conf.Load(path)
		if err != nil {
			srv.ReloadFailed(err)
		} else {
			srv.Reload(ctx, cfg) // logs its own outcome
		}
		notify.Ready()
		return true
	})
}

// onSignal calls f, on a goroutine of its own, for each sig until ctx is
// done or f returns false. The returned function stops it and waits for
// it; it may be called more than once.
func onSignal(ctx context.Context, sig os.Signal, f func(context.Context) bool) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
			if !f(ctx) {
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		cancel()
		<-done
	}
}

// newLogger builds the process logger from the configuration.
func newLogger(l conf.Log, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(l.Level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	switch l.Format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format: unknown format %q", l.Format)
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// onUsageError rewrites the flag package's messages, which name flags with
// a single dash, into the double-dash form shown in --help.
func onUsageError(_ *cli.Context, err error, _ bool) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		return usagef("unknown flag --%s", strings.TrimLeft(name, "-"))
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: "); ok {
		return usagef("--%s needs a value", strings.TrimLeft(name, "-"))
	}
	// invalid value "abc" for flag -connect-timeout: parse error
	// invalid boolean value "maybe" for -splice: parse error
	if rest, ok := strings.CutPrefix(msg, "invalid "); ok {
		rest = strings.TrimPrefix(strings.TrimPrefix(rest, "boolean "), "value ")
		if value, flagPart, ok := strings.Cut(rest, " for "); ok {
			flagPart = strings.TrimLeft(strings.TrimPrefix(flagPart, "flag "), "-")
			name, why, _ := strings.Cut(flagPart, ": ")
			return usagef("invalid value %s for --%s: %s", value, name, why)
		}
	}
	// could not parse "abc" as duration value from environment variable
	// "BMPPROXY_CONNECT_TIMEOUT" for flag connect-timeout: ...
	if before, after, ok := strings.Cut(msg, " for flag "); ok {
		name, why, _ := strings.Cut(after, ": ")
		return usagef("%s for --%s: %s", before, name, why)
	}
	return usagef("%s", msg)
}

// versionString reports the version and commit stamped at link time (see
// version.go), else the module version and the VCS revision from the
// build info, and the Go version.
func versionString() string {
	v, c := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				c = s.Value
			}
		}
	}
	if version != "" {
		v = version
	}
	if commit != "" {
		c = commit
	}
	return fmt.Sprintf("bmpproxy %s commit %s %s %s/%s", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// isTerminal reports whether w is a terminal, so console logs are coloured
// only for a person watching them.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
