package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/urfave/cli/v2"
)

// settingFlag is the cli.Flag of one conf.Flag. It only collects what was
// given and where from; configFromFlags has conf decode it, so that a bad
// value gets the words a file's would.
type settingFlag struct {
	conf.Flag
	given *givenValues
}

func newSettingFlags() []cli.Flag {
	var fs []cli.Flag
	for _, f := range conf.Flags() {
		fs = append(fs, &settingFlag{Flag: f, given: &givenValues{}})
	}
	return fs
}

// settingFlags picks the settingFlags out of fs.
func settingFlags(fs []cli.Flag) []*settingFlag {
	var out []*settingFlag
	for _, f := range fs {
		if sf, ok := f.(*settingFlag); ok {
			out = append(out, sf)
		}
	}
	return out
}

// configFlag is --config: a settingFlag for the way it records where its
// value came from, but not a setting that conf describes.
type configFlag struct{ *settingFlag }

func newConfigFlag() *configFlag {
	return &configFlag{&settingFlag{
		Flag: conf.Flag{
			Name: "config", Aliases: []string{"c"}, EnvVar: "BMPPROXY_CONFIG",
			Usage: "YAML file with the listeners and settings; of the flags below, only " + overridingFlags() +
				" may be given with it, and override the file's",
		},
		given: &givenValues{},
	}}
}

// overridingFlags lists the flags that override a config file's setting:
// "--admin-token-file, --log-level and --log-format".
func overridingFlags() string {
	var names []string
	for _, f := range conf.Flags() {
		if f.Overrides {
			names = append(names, "--"+f.Name)
		}
	}
	return andList(names)
}

// andList joins "a", "a and b", "a, b and c".
func andList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

// Apply registers f under each of its names, after reading its
// environment variable. An empty variable counts as unset.
func (f *settingFlag) Apply(set *flag.FlagSet) error {
	*f.given = givenValues{isBool: f.Bool, repeated: f.Repeated}
	if v, ok := os.LookupEnv(f.EnvVar); ok && v != "" {
		g := f.given
		g.set, g.inEnv, g.env, g.values = true, true, f.EnvVar, []string{v}
		if f.Repeated {
			g.values = nil
			for _, s := range strings.Split(v, ",") {
				g.values = append(g.values, strings.TrimSpace(s))
			}
		}
	}
	for _, name := range f.Names() {
		set.Var(f.given, name, f.Usage)
	}
	return nil
}

func (f *settingFlag) String() string         { return cli.FlagStringer(f) }
func (f *settingFlag) Names() []string        { return append([]string{f.Name}, f.Aliases...) }
func (f *settingFlag) IsSet() bool            { return f.given.set }
func (f *settingFlag) TakesValue() bool       { return !f.Bool }
func (f *settingFlag) GetUsage() string       { return f.Usage }
func (f *settingFlag) GetValue() string       { return f.Default }
func (f *settingFlag) GetDefaultText() string { return f.Default }
func (f *settingFlag) GetEnvVars() []string   { return []string{f.EnvVar} }
func (f *settingFlag) IsVisible() bool        { return true }
func (f *settingFlag) GetCategory() string    { return "" }
func (f *settingFlag) IsSliceFlag() bool      { return f.Repeated }

// apply sets f's values, if any were given, in cfg. Errors name the flag,
// and the environment variable when the values came from there.
func (f *settingFlag) apply(cfg *conf.Config) error {
	if !f.IsSet() {
		if f.Required {
			return usagef("--%s is required, for example --%s %s", f.Name, f.Name, f.Example)
		}
		return nil
	}
	if err := f.Set(cfg, f.given.values...); err != nil {
		return usageError{msg: f.named(err).Error()}
	}
	return nil
}

// named is err about f's value: "--connect-timeout: …", and "(from
// $BMPPROXY_CONNECT_TIMEOUT)" when the value came from there.
func (f *settingFlag) named(err error) error {
	if f.given.env != "" {
		return fmt.Errorf("--%s: %w (from %s)", f.Name, err, f.source())
	}
	return fmt.Errorf("--%s: %w", f.Name, err)
}

// source names where f's value came from: "--config" or
// "$BMPPROXY_CONFIG".
func (f *settingFlag) source() string {
	if f.given.env != "" {
		return "$" + f.given.env
	}
	return "--" + f.Name
}

// sources names what the user set for f: "--target", "$BMPPROXY_TARGET",
// or both when both were given (the command line wins).
func (f *settingFlag) sources() []string {
	var s []string
	if f.given.cmdline {
		s = append(s, "--"+f.Name)
	}
	if f.given.inEnv {
		s = append(s, "$"+f.EnvVar)
	}
	return s
}

// givenAs is f's value as the user gave it: "--log-level=debug" or
// "BMPPROXY_LOG_LEVEL=debug".
func (f *settingFlag) givenAs() string {
	return strings.TrimPrefix(f.source(), "$") + "=" + strings.Join(f.given.values, ",")
}

// aliasCopy is what urfave/cli sets a flag's other names to, through
// Serialize, after one of them was given; argv cannot hold a NUL.
const aliasCopy = "\x00alias"

// givenValues is the flag.Value of a settingFlag.
type givenValues struct {
	isBool, repeated bool
	set              bool
	cmdline          bool     // values came from the command line
	env              string   // the variable they came from otherwise
	inEnv            bool     // the variable is set, whether or not it was used
	values           []string // as given, in order
}

func (g *givenValues) Set(s string) error {
	if s == aliasCopy {
		return nil
	}
	if !g.cmdline || !g.repeated { // the command line replaces the environment
		g.values = nil
	}
	g.set, g.cmdline, g.env = true, true, ""
	g.values = append(g.values, s)
	return nil
}

func (g *givenValues) String() string {
	if g == nil {
		return ""
	}
	return strings.Join(g.values, ",")
}

func (g *givenValues) Serialize() string { return aliasCopy }
func (g *givenValues) IsBoolFlag() bool  { return g.isBool }

// flagPaths rewrites the configuration paths in a validation error of a
// Config built from flags into the flags that set them:
// "listeners[0].listen[1]" becomes "--listen[1]". A boolean written as a
// file sets it, "bmp: true", becomes its flag, "--bmp".
func flagPaths(flags []*settingFlag, msg string) string {
	byPath := map[string]string{}
	var paths []string
	for _, f := range flags {
		byPath[f.Path] = "--" + f.Name
		paths = append(paths, regexp.QuoteMeta(f.Path))
		if f.Bool && f.Default == "false" {
			key := f.Path[strings.LastIndex(f.Path, ".")+1:]
			byPath[key+": true"] = "--" + f.Name
			paths = append(paths, regexp.QuoteMeta(key+": true"))
		}
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	re := regexp.MustCompile(`(^|[\s(])(` + strings.Join(paths, "|") + `)\b`)
	return re.ReplaceAllStringFunc(msg, func(m string) string {
		sub := re.FindStringSubmatch(m)
		return sub[1] + byPath[sub[2]]
	})
}
