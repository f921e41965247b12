package conf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// DefaultDockerRulesPath is where docker mode looks for its rules when
// BMPPROXY_CONFIG is not set.
const DefaultDockerRulesPath = "/etc/bmpproxy/docker.yaml"

// DockerRules configure bmpproxy started by dockerd in place of
// docker-proxy, which passes no options of its own: which published ports
// get a PROXY header, and where logs go.
type DockerRules struct {
	Log DockerLog
	// Rules are tried in order; the first that matches a port mapping
	// decides. A mapping no rule matches gets no header, as with
	// docker-proxy.
	Rules []DockerRule
}

// DockerLog says where docker mode logs: dockerd sends the proxy's stdout
// and stderr to /dev/null.
type DockerLog struct {
	Level  string // as Log.Level; empty means DefaultLogLevel
	Format string // as Log.Format; empty means DefaultLogFormat
	// File, if set, is appended to. Otherwise logs go to syslog when
	// Syslog is true or unset, and nowhere when it is false.
	File   string
	Syslog *bool
}

// DockerRule selects a PROXY mode for the port mappings it matches. A zero
// field matches anything.
type DockerRule struct {
	Proto         string        // "tcp" or "udp"
	ContainerPort uint16        // the container's port
	HostPort      uint16        // the published port
	ContainerIP   Prefixes      // the container's address
	ProxyProtocol ProxyProtocol // v2, v1 (with proto tcp only) or none; required
}

// DockerMapping is what dockerd asked for, as a rule sees it.
type DockerMapping struct {
	Proto     string
	Container netip.AddrPort
	HostPort  uint16
}

// Match returns the PROXY mode for m and the index of the rule that chose
// it, or ProxyNone and -1 when no rule matches.
func (r *DockerRules) Match(m DockerMapping) (ProxyProtocol, int) {
	for i, rule := range r.Rules {
		if rule.Proto != "" && rule.Proto != m.Proto ||
			rule.ContainerPort != 0 && rule.ContainerPort != m.Container.Port() ||
			rule.HostPort != 0 && rule.HostPort != m.HostPort ||
			len(rule.ContainerIP) > 0 && !rule.ContainerIP.Contains(m.Container.Addr().Unmap()) {
			continue
		}
		return rule.ProxyProtocol, i
	}
	return ProxyNone, -1
}

// LoadDockerRules reads the rules at path. A missing file at the default
// path is no error: it means no rules. Every problem is reported, with its
// line, as Parse does.
func LoadDockerRules(path string, isDefault bool) (*DockerRules, error) {
	data, err := readFile("rules", path)
	if err != nil {
		if isDefault && errors.Is(err, os.ErrNotExist) {
			return &DockerRules{}, nil
		}
		return nil, err
	}
	r, err := ParseDockerRules(data)
	if err != nil {
		return nil, fmt.Errorf("rules %s: %w", path, err)
	}
	return r, nil
}

// ParseDockerRules decodes docker mode's rules file. An empty file means
// no rules.
func ParseDockerRules(data []byte) (*DockerRules, error) {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &DockerRules{}, nil
		}
		if _, errs := quoteIPv6(data); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		return nil, syntaxError(err, data)
	}
	r := &DockerRules{}
	if len(doc.Content) == 0 {
		return r, nil
	}
	d := &decoder{lines: map[string]int{}}
	d.mapping(doc.Content[0], "", map[string]func(*yaml.Node, string){
		"log": func(v *yaml.Node, p string) {
			d.mapping(v, p, map[string]func(*yaml.Node, string){
				"level":  func(v *yaml.Node, p string) { d.str(v, p, &r.Log.Level) },
				"format": func(v *yaml.Node, p string) { d.str(v, p, &r.Log.Format) },
				"file":   func(v *yaml.Node, p string) { d.str(v, p, &r.Log.File) },
				"syslog": func(v *yaml.Node, p string) {
					var b bool
					d.boolean(v, p, &b)
					r.Log.Syslog = &b
				},
			})
		},
		"rules": func(v *yaml.Node, p string) { r.Rules = decodeList(d, v, p, "rules", d.dockerRule) },
	})
	if r.Log.Level == "" {
		r.Log.Level = DefaultLogLevel
	}
	if r.Log.Format == "" {
		r.Log.Format = DefaultLogFormat
	}
	if _, err := parseLevel(r.Log.Level); err != nil {
		d.fail(doc.Content[0], "log.level", "%v", err)
	}
	if err := checkFormat(r.Log.Format); err != nil {
		d.fail(doc.Content[0], "log.format", "%v", err)
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return r, nil
}

func (d *decoder) dockerRule(n *yaml.Node, path string, r *DockerRule) {
	port := func(dst *uint16) func(*yaml.Node, string) {
		return func(v *yaml.Node, p string) {
			s, ok := d.scalar(v, p, "a port number")
			if !ok {
				return
			}
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil || n == 0 {
				d.fail(v, p, "invalid port %q (want 1-65535)", s)
				return
			}
			*dst = uint16(n)
		}
	}
	var mode *yaml.Node // proxy_protocol's value, checked once proto is known
	d.mapping(n, path, map[string]func(*yaml.Node, string){
		"proto": func(v *yaml.Node, p string) {
			d.str(v, p, &r.Proto)
			if r.Proto != "tcp" && r.Proto != "udp" {
				d.fail(v, p, "unknown proto %q (want tcp or udp)", r.Proto)
			}
		},
		"container_port": port(&r.ContainerPort),
		"host_port":      port(&r.HostPort),
		"container_ip":   func(v *yaml.Node, p string) { d.prefixes(v, p, &r.ContainerIP) },
		"proxy_protocol": func(v *yaml.Node, p string) { mode = v },
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	d.dockerMode(n, mode, path+".proxy_protocol", r)
}

// dockerMode sets r.ProxyProtocol from v, the rule n's proxy_protocol, and
// refuses what docker mode cannot do: transparent dialing, and v1 on a rule
// that matches UDP, since PROXY v1 has no form for datagrams. Each error
// offers only the modes the rule could use.
func (d *decoder) dockerMode(n, v *yaml.Node, path string, r *DockerRule) {
	want := "v2, v1 or none"
	if r.Proto == "udp" {
		want = "v2 or none"
	}
	if v == nil {
		d.fail(n, path, "missing (want %s)", want)
		return
	}
	s, ok := d.scalar(v, path, want)
	if !ok {
		return
	}
	switch pp := ProxyProtocol(s); pp {
	case ProxyV2, ProxyNone:
		r.ProxyProtocol = pp
	case ProxyV1:
		switch r.Proto {
		case "udp":
			d.fail(v, path, "v1 has no UDP form (want %s)", want)
		case "":
			d.fail(v, path, "v1 has no UDP form, and a rule without proto matches UDP too (want v2 or none, or add proto: tcp)")
		default:
			r.ProxyProtocol = pp
		}
	case ProxyTransparent:
		d.fail(v, path, "transparent is not available in docker-proxy mode (want %s)", want)
	default:
		d.fail(v, path, "unknown proxy protocol %q (want %s)", s, want)
	}
}
