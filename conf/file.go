package conf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds a configuration file. Real ones are a few KiB.
const MaxFileSize = 1 << 20

// Load reads the YAML file at path, applies defaults and validates it. It
// reports every problem at once; see Parse, which also says what the
// overrides do.
func Load(path string, overrides ...Override) (*Config, error) {
	data, err := readFile("config", path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(data, overrides...)
	if err != nil {
		return nil, fmt.Errorf("config %s:\n%w", path, err)
	}
	return c, nil
}

// Override is a value given for a flag, on the command line or in the
// environment, that replaces the file's own (see Flag.Overrides).
type Override struct {
	Flag   Flag
	Values []string
}

// readFile reads at most MaxFileSize bytes of the file at path. Errors
// start with what the file is, for example "config: open …".
func readFile(what, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s %s: larger than %d bytes", what, path, MaxFileSize)
	}
	return data, nil
}

// Parse decodes a YAML configuration and validates it. Decoding starts
// from the defaults, so that a default applies only to a key that is
// absent, and a zero in the file means zero. It is strict: an unknown or
// repeated key is an error. Every problem is reported, joined, each as a
// *FieldError with the line it is on, for example
//
//	line 14: listeners[2]: unknown field "proxy_protocl"
//	line 9: listeners[2].target: missing port in "collector"
//
// Each override replaces a top-level setting after decoding and before
// the defaults derived from it, so that a listener with no log settings
// of its own inherits an overridden one. A bad override value is reported
// as its flag's: Flag.Check finds it first.
func Parse(data []byte, overrides ...Override) (*Config, error) {
	root, errs := document(data)
	if root == nil {
		return nil, errors.Join(errs...)
	}
	d := newDecoder()
	d.errs = errs
	c := Default()
	configSettings().decode(d, root, "", c)
	for _, o := range overrides {
		if err := o.apply(c); err != nil {
			d.errs = append(d.errs, err)
		}
	}
	if err := c.Complete(); err != nil {
		d.locate(err)
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return c, nil
}

func (o Override) apply(c *Config) error {
	if !o.Flag.Overrides {
		return fmt.Errorf("--%s cannot override a file's setting", o.Flag.Name)
	}
	if err := o.Flag.Check(o.Values...); err != nil {
		return fmt.Errorf("--%s: %w", o.Flag.Name, err)
	}
	return o.Flag.Set(c, o.Values...)
}

// document parses data as a single YAML document and returns its root, or
// nil and why not. A syntax error is given in words that say what to
// write instead when its cause is one bmpproxy files are known for: an
// IPv6 address with a port, unquoted, which YAML reads as a list, or tabs
// in the indentation. Unquoted addresses are then quoted in memory and
// the document parsed again, so that the root is returned, after the
// errors for them, and the file's other problems are found too.
func document(data []byte) (*yaml.Node, []error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []error{&FieldError{Err: errors.New("empty file: at least one listener is required")}}
		}
		if fixed, errs := quoteIPv6(data); len(errs) > 0 {
			root, more := document(fixed)
			return root, append(errs, more...)
		}
		return nil, []error{syntaxError(err, data)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, []error{&FieldError{Line: extra.Line, Err: errors.New("more than one YAML document")}}
	}
	if len(doc.Content) == 0 {
		return nil, []error{&FieldError{Err: errors.New("empty file: at least one listener is required")}}
	}
	return doc.Content[0], nil
}

// unquotedV6 finds the commonest YAML mistake in a bmpproxy file: an
// IPv6 address with a port, unquoted, as a key's value or a list item,
// which YAML reads as a list.
var unquotedV6 = regexp.MustCompile(`(?m)^(?:[^#\n]*:[ \t]+|[ \t]*-[ \t]+)(\[[0-9A-Za-z.%]*:[0-9A-Za-z:.%]*\]:\d+)`)

// quoteIPv6 returns data with every unquoted IPv6 address with a port
// quoted, and an error for each, on its line; no errors when there is
// none. The lines stay where they were.
func quoteIPv6(data []byte) ([]byte, []error) {
	var errs []error
	var fixed []byte
	last := 0
	for _, loc := range unquotedV6.FindAllSubmatchIndex(data, -1) {
		addr := string(data[loc[2]:loc[3]])
		line := 1 + bytes.Count(data[:loc[2]], []byte("\n"))
		errs = append(errs, &FieldError{Line: line, Err: fmt.Errorf("quote IPv6 addresses: %q, not %s (YAML reads [ ] as a list)", addr, addr)})
		fixed = append(fixed, data[last:loc[2]]...)
		fixed = strconv.AppendQuote(fixed, addr)
		last = loc[3]
	}
	return append(fixed, data[last:]...), errs
}

// tabError reports the lines indented with a tab, which YAML forbids, or
// nil when there are none.
func tabError(data []byte) error {
	var lines []int
	for i, line := range bytes.Split(data, []byte("\n")) {
		content := bytes.TrimLeft(line, " \t")
		if len(content) > 0 && bytes.ContainsRune(line[:len(line)-len(content)], '\t') {
			lines = append(lines, i+1)
		}
	}
	if len(lines) == 0 {
		return nil
	}
	msg := "indented with a tab: YAML forbids tabs for indentation; indent with spaces"
	switch more := lines[1:]; len(more) {
	case 0:
	case 1:
		msg += fmt.Sprintf(" (line %d too)", more[0])
	default:
		s := make([]string, len(more))
		for i, l := range more {
			s[i] = strconv.Itoa(l)
		}
		msg += fmt.Sprintf(" (lines %s and %s too)", strings.Join(s[:len(s)-1], ", "), s[len(s)-1])
	}
	return &FieldError{Line: lines[0], Err: errors.New(msg)}
}

// syntaxError turns a yaml parse error ("yaml: line 3: did not find ...")
// into a FieldError with its line, unless data has tabs in its
// indentation, which is the error then.
func syntaxError(err error, data []byte) error {
	if err := tabError(data); err != nil {
		return err
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				return &FieldError{Line: n, Err: errors.New(tail)}
			}
		}
	}
	return &FieldError{Err: errors.New(msg)}
}

// decoder walks the YAML tree, collecting every error and the line of every
// path it decoded, so that Validate's errors can be given lines too.
type decoder struct {
	errs  []error
	lines map[string]int // path → line of its value
	// covered holds the paths, besides those of errs, whose Validate
	// errors an error in errs says already.
	covered map[string]bool
}

func newDecoder() *decoder { return &decoder{lines: map[string]int{}, covered: map[string]bool{}} }

// cover leaves Validate's errors at path out: one of d's says the same.
func (d *decoder) cover(path string) { d.covered[path] = true }

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Line: n.Line, Path: path, Err: fmt.Errorf(format, args...)})
}

// locate adds Validate's errors to the decoding ones, each with the line
// of the longest decoded path that is a prefix of its own. An error about
// a path that already failed to decode is left out: "missing" after
// "invalid" says nothing new.
func (d *decoder) locate(err error) {
	failed := map[string]bool{}
	for _, e := range d.errs {
		var fe *FieldError
		if errors.As(e, &fe) {
			failed[fe.Path] = true
		}
	}
	for _, e := range unjoin(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			if failed[fe.Path] || d.covered[fe.Path] {
				continue
			}
			if fe.Line == 0 {
				fe.Line = d.lineOf(fe.Path)
			}
		}
		d.errs = append(d.errs, e)
	}
}

func (d *decoder) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// mapping calls fields[key] for every key of the mapping n, in file order,
// and reports unknown and repeated keys.
func (d *decoder) mapping(n *yaml.Node, path string, fields map[string]func(v *yaml.Node, path string)) {
	d.lines[path] = n.Line
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of keys to values, got %s", kind(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		f, ok := fields[key]
		if !ok {
			d.fail(k, path, "unknown field %q (known: %s)", key, knownKeys(fields))
			continue
		}
		if line, dup := seen[key]; dup {
			d.fail(k, path, "field %q repeats the one on line %d", key, line)
			continue
		}
		seen[key] = k.Line
		sub := key
		if path != "" {
			sub = path + "." + key
		}
		d.lines[sub] = v.Line
		f(v, sub)
	}
}

func knownKeys(fields map[string]func(*yaml.Node, string)) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// scalar returns n's text, or false after reporting that n is not one.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		hint := ""
		if n.Kind == yaml.SequenceNode && strings.Contains(want, "address") {
			hint = ` (quote IPv6 addresses: "[::]:5000")`
		}
		d.fail(n, path, "want %s, got %s%s", want, kind(n), hint)
		return "", false
	}
	return n.Value, true
}

func (d *decoder) str(n *yaml.Node, path string, dst *string) {
	if s, ok := d.scalar(n, path, "a string"); ok {
		*dst = s
	}
}

func (d *decoder) duration(n *yaml.Node, path string, dst *time.Duration) {
	s, ok := d.scalar(n, path, `a duration such as "5s"`)
	if !ok {
		return
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, `invalid duration %q (want a number with a unit, such as "5s" or "1m30s")`, s)
		return
	}
	*dst = v
}

// targetList returns n, one target address or a list of them, each once,
// in order, after reporting every one that is not a target or is given
// again (a name in any case is the same name); nil when none is.
func (d *decoder) targetList(n *yaml.Node, path string) []Target {
	var ts []Target
	seen := map[Target]bool{}
	d.list(n, path, func(v *yaml.Node, p string) {
		t, ok := d.target(v, p)
		if !ok {
			return
		}
		if seen[t.key()] {
			d.fail(v, p, "%s is given twice; give each target once", t)
			return
		}
		seen[t.key()] = true
		ts = append(ts, t)
	})
	return ts
}

// target returns n as a target address, or false after reporting why it
// is not one.
func (d *decoder) target(n *yaml.Node, path string) (Target, bool) {
	s, ok := d.scalar(n, path, `an address such as "collector:5000"`)
	if !ok {
		return Target{}, false
	}
	t, err := ParseTarget(s)
	if err != nil {
		d.fail(n, path, "%v", err)
		return Target{}, false
	}
	return t, true
}

func (d *decoder) byteSize(n *yaml.Node, path string, dst *ByteSize) {
	s, ok := d.scalar(n, path, "a size such as 4MiB")
	if !ok {
		return
	}
	v, err := ParseByteSize(s)
	if err != nil {
		d.fail(n, path, "%v", err)
		return
	}
	*dst = v
}

// exclusive reports the keys a and b of the mapping n when both are
// there, naming the line of each, at the second; fix says what to write.
// It reports whether it did.
func (d *decoder) exclusive(n *yaml.Node, path, a, b, fix string) bool {
	if n.Kind != yaml.MappingNode {
		return false
	}
	var ka, kb *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k := n.Content[i]; k.Value {
		case a:
			ka = k
		case b:
			kb = k
		}
	}
	if ka == nil || kb == nil {
		return false
	}
	second := max(ka.Line, kb.Line)
	d.fail(&yaml.Node{Line: second}, path, "%s (line %d) and %s (line %d) exclude each other; %s", a, ka.Line, b, kb.Line, fix)
	return true
}

func (d *decoder) integer(n *yaml.Node, path string, dst *int) {
	if v, ok := d.wholeNumber(n, path, "a whole number"); ok {
		*dst = v
	}
}

// wholeNumber returns n as a whole number, or reports that it is not
// what want describes.
func (d *decoder) wholeNumber(n *yaml.Node, path, want string) (int, bool) {
	s, ok := d.scalar(n, path, want)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || n.Tag != "!!int" {
		d.fail(n, path, "want %s, got %q", want, s)
		return 0, false
	}
	return v, true
}

func (d *decoder) boolean(n *yaml.Node, path string, dst *bool) {
	s, ok := d.scalar(n, path, "true or false")
	if !ok {
		return
	}
	v, err := strconv.ParseBool(s)
	if err != nil || n.Tag != "!!bool" {
		d.fail(n, path, "want true or false, got %q", s)
		return
	}
	*dst = v
}

// decodeList decodes the list n, each item with decode at its own path;
// anything but a list is an error naming what was wanted, and gives nil.
func decodeList[T any](d *decoder, n *yaml.Node, path, what string, decode func(*yaml.Node, string, *T)) []T {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "want a list of %s, got %s", what, kind(n))
		return nil
	}
	out := make([]T, len(n.Content))
	for i, v := range n.Content {
		decode(v, fmt.Sprintf("%s[%d]", path, i), &out[i])
	}
	return out
}

// list calls each for every item of n, or for n itself when it is a single
// scalar: "listen: a" and "listen: [a, b]" both work.
func (d *decoder) list(n *yaml.Node, path string, each func(v *yaml.Node, path string)) {
	if n.Kind != yaml.SequenceNode {
		each(n, path)
		return
	}
	for i, v := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.lines[p] = v.Line
		each(v, p)
	}
}

func (d *decoder) prefixes(n *yaml.Node, path string, dst *Prefixes) {
	d.list(n, path, func(v *yaml.Node, p string) {
		s, ok := d.scalar(v, p, `a prefix such as "198.51.100.0/24" or an address`)
		if !ok {
			return
		}
		pfx, err := ParsePrefix(s)
		if err != nil {
			d.fail(v, p, "%v", err)
			return
		}
		*dst = append(*dst, pfx)
	})
}

// ParsePrefix parses a CIDR prefix such as "2001:db8::/32", or a single
// address, which means just that address. IPv4-mapped IPv6 prefixes are
// turned into IPv4 ones. A prefix with host bits set is an error, since it
// is most often a typo for a narrower or wider one.
func ParsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid prefix %q (want CIDR notation such as \"198.51.100.0/24\")", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid prefix %q (want CIDR notation such as \"198.51.100.0/24\")", s)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("invalid prefix %q: an IPv4-mapped prefix needs at least /96", s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("prefix %q has host bits set (did you mean %q?)", s, m)
	}
	return p, nil
}
