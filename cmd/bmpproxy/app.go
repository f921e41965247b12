package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	if errors.Is(err, fs.ErrNotExist) {
		return nil, configError{missingConfig(path, err)}
	}
	if err != nil {
		return nil, configError{err}
	}
	return cfg, nil
}

// missingConfig explains a --config file that does not exist, which is
// what the container image's default command meets until a config is
// mounted: the image ships none, so that no default can send a header to
// a collector that cannot read it. It says where the file goes and which
// mode each kind of collector needs.
func missingConfig(path string, err error) error {
	return fmt.Errorf("%w\n"+
		"  write the configuration there (in a container, mount it: -v $PWD/bmpproxy.yaml:%s:ro),\n"+
		"  or give --target (and --listen) instead of --config, with the header the collector reads:\n"+
		"    PROXY v2 (pmacct master, HAProxy): --proxy-protocol v2, as in examples/pmacct.yaml\n"+
		"    none (OpenBMP, gobmp, Rotonda; pmacct 1.7 for IPv6 routers): transparent dialing or two hops,\n"+
		"      as in examples/openbmp-aio.yaml; never v2, which such a collector reads as a bad BMP message", err, path)
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
