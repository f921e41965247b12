package conf

import (
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Flag is the command-line form of one setting, for the serve command,
// which sets up a single listener without a file. Flags describes them;
// a command-line package builds its own flags from these.
type Flag struct {
	Name    string   // without dashes: "connect-timeout"
	Aliases []string // other names, such as "l"
	EnvVar  string   // the environment variable that sets the flag too
	Usage   string
	// Default is the value the flag has when it is not given, in the
	// flag's syntax; empty for a required flag.
	Default string
	// Required flags must be given; Example is a value to suggest when one
	// is missing.
	Required bool
	Example  string
	// Bool flags take no value: --bmp is --bmp=true.
	Bool bool
	// Repeated flags may be given more than once, each time adding a
	// value; EnvVar holds them comma-separated.
	Repeated bool
	// Path is where the setting is in a Config, as its errors name it:
	// "splice.max_pipes", "listeners[0].listen".
	Path string
	// Overrides: the flag may be given with a config file, whose value it
	// then replaces (see Parse). Only the settings of how the process
	// runs, its logging and the admin token file, do; a file holds what
	// it serves.
	Overrides bool

	set func(c *Config, values []string) error
}

// Set applies the values given for f (the last one, unless f is
// Repeated) to c, which must come from FlagConfig. A value decodes as it
// would in a file, so a bad one gets the words a file's would, without
// the path: `invalid duration "5" (want a number with a unit, such as "5s"
// or "1m30s")`.
func (f Flag) Set(c *Config, values ...string) error {
	if len(values) == 0 {
		return errors.New("no value")
	}
	return f.set(c, values)
}

// Check reports whether values are good for f on their own: the errors
// Set and Validate would find in them, in Set's words.
func (f Flag) Check(values ...string) error {
	c := FlagConfig()
	if err := f.Set(c, values...); err != nil {
		return err
	}
	var msgs []string
	for _, err := range unjoin(c.Complete()) {
		var fe *FieldError
		if errors.As(err, &fe) && (fe.Path == f.Path || strings.HasPrefix(fe.Path, f.Path+".") || strings.HasPrefix(fe.Path, f.Path+"[")) {
			msgs = append(msgs, fe.Err.Error())
		}
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// Flags returns the serve command's flags, in the order --help lists them.
func Flags() []Flag {
	var fs []Flag
	for _, e := range listenerSettings() {
		if e.flag != nil {
			fs = append(fs, newFlag(e, "listeners[0].", func(c *Config) *Listener { return &c.Listeners[0] }))
		}
	}
	for _, e := range configSettings() {
		if e.flag != nil {
			fs = append(fs, newFlag(e, "", func(c *Config) *Config { return c }))
		}
	}
	return fs
}

// FlagConfig returns the configuration that the flags apply to before any
// is given: every default, and one listener with the flags' defaults.
// After the flags, Complete finishes and validates it.
func FlagConfig() *Config {
	c := Default()
	c.Listeners = []Listener{DefaultListener()}
	for _, f := range Flags() {
		if f.Default == "" {
			continue
		}
		if err := f.Set(c, f.Default); err != nil {
			panic(fmt.Sprintf("conf: the default of --%s: %v", f.Name, err))
		}
	}
	return c
}

func newFlag[S any](e entry[S], pathPrefix string, in func(*Config) *S) Flag {
	spec := *e.flag
	def := spec.def
	if def == "" {
		def = e.def
	}
	_, isBool := e.field(new(S)).(*bool)
	path := pathPrefix + e.key
	return Flag{
		Name: spec.name, Aliases: spec.aliases, EnvVar: spec.env, Usage: spec.usage,
		Default: def, Required: spec.example != "", Example: spec.example,
		Bool: isBool, Repeated: spec.repeated, Path: path, Overrides: spec.override,
		set: func(c *Config, values []string) error {
			d := newDecoder()
			s := in(c)
			e.decode(d, flagValue(values, spec.repeated), path, s)
			if len(d.errs) > 0 {
				var msgs []string
				for _, err := range d.errs {
					var fe *FieldError
					if errors.As(err, &fe) {
						err = fe.Err
					}
					msgs = append(msgs, err.Error())
				}
				return errors.New(strings.Join(msgs, "; "))
			}
			if spec.negate {
				b := e.field(s).(*bool)
				*b = !*b
			}
			return nil
		},
	}
}

// flagValue is a flag's values as the YAML a file would hold: a scalar,
// typed as YAML types a plain one, or a list of them.
func flagValue(values []string, repeated bool) *yaml.Node {
	scalar := func(s string) *yaml.Node {
		n := &yaml.Node{Kind: yaml.ScalarNode, Value: s}
		n.Tag = n.ShortTag()
		if s == "" {
			n.Tag = "!!str" // --admin-listen '' is an empty string, not nothing
		}
		return n
	}
	if !repeated {
		return scalar(values[len(values)-1])
	}
	n := &yaml.Node{Kind: yaml.SequenceNode}
	for _, v := range values {
		n.Content = append(n.Content, scalar(v))
	}
	return n
}
