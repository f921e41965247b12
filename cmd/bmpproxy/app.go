package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/dockerproxy"
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

func serveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "config",
			Aliases: []string{"c"},
			Usage:   "YAML file with the listeners and settings; not combined with the flags below",
			EnvVars: []string{"BMPPROXY_CONFIG"},
		},
		&cli.StringSliceFlag{
			Name:    "listen",
			Aliases: []string{"l"},
			Usage: "address to accept on; repeat for more. '[::]:P' (or ':P') is dual-stack and accepts IPv4 and IPv6, " +
				"'0.0.0.0:P' is IPv4 only, any other address listens on itself only",
			Value:   cli.NewStringSlice("[::]:5000"),
			EnvVars: []string{"BMPPROXY_LISTEN"},
		},
		&cli.StringFlag{
			Name:    "target",
			Aliases: []string{"t"},
			Usage:   "collector address as host:port; a name is resolved again for every connection (required)",
			EnvVars: []string{"BMPPROXY_TARGET"},
		},
		&cli.StringFlag{
			Name:    "proxy-protocol",
			Usage:   "header sent to the target before any payload: v2, v1 or none",
			Value:   string(conf.ProxyV2),
			EnvVars: []string{"BMPPROXY_PROXY_PROTOCOL"},
		},
		&cli.DurationFlag{
			Name:    "connect-timeout",
			Usage:   "how long to wait for the target to answer before closing the client",
			Value:   conf.DefaultConnectTimeout,
			EnvVars: []string{"BMPPROXY_CONNECT_TIMEOUT"},
		},
		&cli.DurationFlag{
			Name:    "drain-timeout",
			Usage:   "after SIGINT or SIGTERM, how long open connections may continue before they are closed",
			Value:   conf.DefaultDrainTimeout,
			EnvVars: []string{"BMPPROXY_DRAIN_TIMEOUT"},
		},
		&cli.StringFlag{
			Name:    "log-level",
			Usage:   "one of " + strings.Join(conf.LevelNames(), ", "),
			Value:   conf.DefaultLogLevel,
			EnvVars: []string{"BMPPROXY_LOG_LEVEL"},
		},
		&cli.StringFlag{
			Name:    "log-format",
			Usage:   "json or console",
			Value:   conf.DefaultLogFormat,
			EnvVars: []string{"BMPPROXY_LOG_FORMAT"},
		},
		&cli.BoolFlag{
			Name:    "splice",
			Usage:   "move bytes with splice(2); --splice=false copies through user space",
			Value:   true,
			EnvVars: []string{"BMPPROXY_SPLICE"},
		},
		&cli.IntFlag{
			Name:    "max-pipes",
			Usage:   "bound on kernel pipes in use at once (2 fds each); directions beyond it copy through user space",
			Value:   1024,
			EnvVars: []string{"BMPPROXY_MAX_PIPES"},
		},
		&cli.BoolFlag{
			Name:    "bmp",
			Usage:   "BMP pre-check: refuse a client whose first bytes are not a BMP v3 message, before dialing",
			EnvVars: []string{"BMPPROXY_BMP"},
		},
		&cli.StringFlag{
			Name:    "admin-listen",
			Usage:   "address for the HTTP admin listener (/metrics, /routers, /healthz, /readyz); off when empty",
			EnvVars: []string{"BMPPROXY_ADMIN_LISTEN"},
		},
		&cli.StringFlag{
			Name: "admin-token-file",
			Usage: "file (mode 0600) with the bearer token that POST /upgrade on the admin listener requires; " +
				"without it, POST /upgrade is served only on a loopback --admin-listen",
			EnvVars: []string{"BMPPROXY_ADMIN_TOKEN_FILE"},
		},
		&cli.BoolFlag{
			Name:  "version",
			Usage: "print the version and exit",
		},
	}
}

// fileFlags are the flags whose settings a config file holds instead.
var fileFlags = []string{"listen", "target", "proxy-protocol", "connect-timeout", "drain-timeout",
	"log-level", "log-format", "splice", "max-pipes", "bmp", "admin-listen", "admin-token-file"}

// loadConfig returns the configuration from --config, or from the flags.
func loadConfig(c *cli.Context) (*conf.Config, error) {
	if c.NArg() > 0 {
		return nil, usagef("unexpected argument %q", c.Args().First())
	}
	path := c.String("config")
	if path == "" {
		return configFromFlags(c)
	}
	var set []string
	for _, f := range fileFlags {
		if c.IsSet(f) {
			set = append(set, "--"+f)
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

// configFromFlags builds and validates a configuration from the command line.
// Errors name the flag.
func configFromFlags(c *cli.Context) (*conf.Config, error) {
	if !c.IsSet("target") {
		return nil, usagef("--target is required, for example --target collector:5000")
	}
	target, err := conf.ParseTarget(c.String("target"))
	if err != nil {
		return nil, usagef("--target: %v", err)
	}
	addrs := c.StringSlice("listen")
	if len(addrs) == 0 {
		return nil, usagef("--listen: at least one address is required")
	}
	l := conf.Listener{Target: target, ConnectTimeout: c.Duration("connect-timeout")}
	for _, s := range addrs {
		a, err := conf.ParseListen(s)
		if err != nil {
			return nil, usagef("--listen: %v", err)
		}
		l.Listen = append(l.Listen, a)
	}
	pp, err := conf.ParseProxyProtocol(c.String("proxy-protocol"))
	if err != nil {
		return nil, usagef("--proxy-protocol: %v", err)
	}
	l.ProxyProtocol = pp
	bmpCheck := c.Bool("bmp")
	l.BMP = &bmpCheck
	if l.ConnectTimeout <= 0 {
		return nil, usagef("--connect-timeout: must be positive, got %s", l.ConnectTimeout)
	}
	cfg := &conf.Config{
		Listeners:    []conf.Listener{l},
		DrainTimeout: c.Duration("drain-timeout"),
		Log:          conf.Log{Level: c.String("log-level"), Format: c.String("log-format")},
		Splice:       conf.Splice{Disabled: !c.Bool("splice"), MaxPipes: c.Int("max-pipes")},
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = -1 // an explicit 0 means "close at once"
	}
	if cfg.Splice.MaxPipes <= 0 {
		return nil, usagef("--max-pipes: must be positive, got %d", cfg.Splice.MaxPipes)
	}
	if a := c.String("admin-listen"); a != "" {
		if cfg.Admin, err = conf.ParseListen(a); err != nil {
			return nil, usagef("--admin-listen: %v", err)
		}
	}
	cfg.AdminTokenFile = c.String("admin-token-file")
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, usagef("%s", flagNames(err.Error()))
	}
	return cfg, nil
}

// flagNames rewrites configuration paths in validation errors into the
// flags that set them.
func flagNames(msg string) string {
	return strings.NewReplacer(
		"log.level:", "--log-level:",
		"log.format:", "--log-format:",
		"listeners[0].listen", "--listen",
	).Replace(msg)
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
