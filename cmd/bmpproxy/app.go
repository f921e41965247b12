package main

import (
	"bytes"
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
	code, msg := exitFor(err)
	// Once the process logger exists, its line is the report.
	if msg != "" && !errors.As(err, new(loggedError)) {
		fmt.Fprintf(stderr, "bmpproxy: %s\n", msg)
	}
	return code
}

// exitFor returns the exit code for err, and the line that reports it
// ("" for none).
func exitFor(err error) (code int, msg string) {
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage, ue.msg + " (see 'bmpproxy --help')"
	}
	var ce configError
	if errors.As(err, &ce) {
		return exitUsage, ce.err.Error()
	}
	var es exitStatus
	if errors.As(err, &es) {
		return int(es), ""
	}
	return exitError, err.Error()
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
			"Pick the mode your collector reads: v2 for pmacct master, HAProxy and other PROXY v2 readers;\n" +
			"transparent (or two hops, in Docker) for OpenBMP, gobmp, Rotonda, and pmacct 1.7 with IPv6\n" +
			"routers, which read no header, or only an IPv4 one (README: Pick the mode for your collector).\n\n" +
			"With --config, the listeners and every other setting come from a YAML file instead\n" +
			"(examples/pmacct.yaml, examples/openbmp-aio.yaml); SIGHUP reloads it without touching open\n" +
			"connections.\n" +
			"Only " + overridingFlags() + " (or their variables) may be given with it;\n" +
			"they override the file's top-level values, across reloads too.\n\n" +
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
			poolCommand(stdout, stderr),
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
	version := &cli.BoolFlag{
		Name:  "version",
		Usage: "print the version and exit",
	}
	return append(append([]cli.Flag{newConfigFlag()}, newSettingFlags()...), version)
}

// source is where the serve command's configuration comes from: the file
// that --config names, with the settings that flags or variables
// override in it, or, without a file, the flags.
type source struct {
	config *settingFlag   // --config
	flags  []*settingFlag // the settings' flags
}

func newSource(c *cli.Context) *source {
	src := &source{flags: settingFlags(c.App.Flags)}
	for _, f := range c.App.Flags {
		if cf, ok := f.(*configFlag); ok {
			src.config = cf.settingFlag
		}
	}
	return src
}

// path is the config file's, or "" when the flags are the configuration.
func (src *source) path() string { return strings.Join(src.config.given.values, "") }

// overrides are the flags given that override the file's settings.
func (src *source) overrides() []*settingFlag {
	var out []*settingFlag
	for _, f := range src.flags {
		if f.IsSet() && f.Overrides {
			out = append(out, f)
		}
	}
	return out
}

// load returns the configuration: from the file, with its overrides, or
// from the flags. Errors name the flag or variable that is wrong.
func (src *source) load() (*conf.Config, error) {
	if src.path() == "" {
		return configFromFlags(src.flags)
	}
	var refused []*settingFlag
	for _, f := range src.flags {
		if f.IsSet() && !f.Overrides {
			refused = append(refused, f)
		}
	}
	if len(refused) > 0 {
		return nil, src.refuse(refused)
	}
	for _, f := range src.overrides() {
		if err := f.Check(f.given.values...); err != nil {
			return nil, usageError{msg: f.named(err).Error()}
		}
	}
	return src.loadFile()
}

// loadFile loads the file with its overrides, at start and on each reload,
// so that a reload does not undo them.
func (src *source) loadFile() (*conf.Config, error) {
	var ovs []conf.Override
	for _, f := range src.overrides() {
		ovs = append(ovs, conf.Override{Flag: f.Flag, Values: f.given.values})
	}
	cfg, err := conf.Load(src.path(), ovs...)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, configError{missingConfig(src.path(), err)}
	}
	if err != nil {
		return nil, configError{err}
	}
	return cfg, nil
}

// refuse is the error for flags or variables, given with --config, that
// set what the file holds.
func (src *source) refuse(set []*settingFlag) error {
	var names, paths []string
	for _, f := range set {
		names = append(names, f.sources()...)
		paths = append(paths, strings.Replace(f.Path, "listeners[0].", "listeners[].", 1))
	}
	holds := "that setting"
	if len(paths) > 1 {
		holds = "those settings"
	}
	return usagef("%s cannot be combined with %s: the file holds %s (%s); only %s, or their variables, may override it",
		src.config.source(), andList(names), holds, strings.Join(paths, ", "), overridingFlags())
}

// tokenError names the setting that gave the admin token file in err: its
// flag, or variable, or the file's key.
func (src *source) tokenError(err error) error {
	for _, f := range src.flags {
		if f.Path != "admin_token_file" {
			continue
		}
		if src.path() != "" && !f.IsSet() {
			break
		}
		return f.named(err)
	}
	return fmt.Errorf("admin_token_file: %w", err)
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
		w = consoleWriter(w)
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format: unknown format %q", l.Format)
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), nil
}

// consoleWriter writes the console log format to w, coloured only for a
// person watching it. An error of several lines, such as the problems of a
// config file that does not reload, shows its first line in the error
// field and each further one below the line, indented; JSON keeps them in
// one string.
func consoleWriter(w io.Writer) zerolog.ConsoleWriter {
	noColor := !isTerminal(w) || os.Getenv("NO_COLOR") != ""
	return zerolog.ConsoleWriter{
		Out: w, TimeFormat: time.RFC3339, NoColor: noColor,
		FormatErrFieldValue: func(v any) string {
			s := fmt.Sprint(v) // quoted already when it needs to be
			if u, err := strconv.Unquote(s); err == nil {
				if first, _, ok := strings.Cut(u, "\n"); ok {
					s = strconv.Quote(first)
				}
			}
			if noColor {
				return s
			}
			return "\x1b[1m\x1b[31m" + s + "\x1b[0m"
		},
		FormatExtra: func(evt map[string]any, buf *bytes.Buffer) error {
			s, _ := evt[zerolog.ErrorFieldName].(string)
			_, rest, ok := strings.Cut(s, "\n")
			if !ok {
				return nil
			}
			for _, line := range strings.Split(rest, "\n") {
				buf.WriteString("\n    ")
				buf.WriteString(line)
			}
			return nil
		},
	}
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
