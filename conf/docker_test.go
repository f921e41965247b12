package conf

import (
	"net/netip"
	"testing"
)

func TestDockerRules(t *testing.T) {
	r, err := ParseDockerRules([]byte(yml(`
log:
	file: /var/log/bmpproxy.log
rules:
	- container_port: 5000
		proxy_protocol: v2
	- container_ip: 172.31.250.0/24
		proto: tcp
		host_port: 8001
		proxy_protocol: v1
`)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Log.File != "/var/log/bmpproxy.log" || r.Log.Level != "info" || r.Log.Syslog != nil {
		t.Errorf("log %+v", r.Log)
	}
	ap := netip.MustParseAddrPort
	for _, tt := range []struct {
		m    DockerMapping
		want ProxyProtocol
		rule int
	}{
		{DockerMapping{"tcp", ap("172.17.0.2:5000"), 5000}, ProxyV2, 0},
		{DockerMapping{"udp", ap("[fd42::2]:5000"), 15000}, ProxyV2, 0},
		{DockerMapping{"tcp", ap("172.31.250.3:8001"), 8001}, ProxyV1, 1},
		{DockerMapping{"tcp", ap("172.31.250.3:8001"), 8002}, ProxyNone, -1},
		{DockerMapping{"udp", ap("172.31.250.3:8001"), 8001}, ProxyNone, -1},
		{DockerMapping{"tcp", ap("172.17.0.3:3306"), 3306}, ProxyNone, -1},
	} {
		if got, rule := r.Match(tt.m); got != tt.want || rule != tt.rule {
			t.Errorf("Match(%+v) = %s, %d; want %s, %d", tt.m, got, rule, tt.want, tt.rule)
		}
	}
	if r, err := ParseDockerRules(nil); err != nil || len(r.Rules) != 0 {
		t.Errorf("empty rules: %+v, %v", r, err)
	}
	if _, err := LoadDockerRules("/nonexistent/docker.yaml", true); err != nil {
		t.Errorf("absent default file: %v", err)
	}
	if _, err := LoadDockerRules("/nonexistent/docker.yaml", false); err == nil || err.Error() != "rules: open /nonexistent/docker.yaml: no such file or directory" {
		t.Errorf("absent named file: %v", err)
	}
}

// TestDockerRuleErrors checks that each bad rule is refused with its line
// and path, and that an error offers only the modes the rule could use.
func TestDockerRuleErrors(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"unknown key", "rules:\n  - container_port: 5000\n    proxy_protocl: v2\n",
			`line 3: rules[0]: unknown field "proxy_protocl" (known: container_ip, container_port, host_port, proto, proxy_protocol)
line 2: rules[0].proxy_protocol: missing (want v2, v1 or none)`},
		{"bad port", "rules:\n  - container_port: 70000\n    proxy_protocol: v2\n", `line 2: rules[0].container_port: invalid port "70000" (want 1-65535)`},
		{"bad proto", "rules:\n  - proto: sctp\n    proxy_protocol: v2\n", `line 2: rules[0].proto: unknown proto "sctp" (want tcp or udp)`},
		{"bad mode", "rules:\n  - proxy_protocol: v3\n", `line 2: rules[0].proxy_protocol: unknown proxy protocol "v3" (want v2, v1 or none)`},
		{"bad mode for udp", "rules:\n  - proto: udp\n    proxy_protocol: v3\n", `line 3: rules[0].proxy_protocol: unknown proxy protocol "v3" (want v2 or none)`},
		{"mode not a scalar", "rules:\n  - proxy_protocol: [v2]\n", `line 2: rules[0].proxy_protocol: want v2, v1 or none, got a list`},
		{"missing mode for udp", "rules:\n  - host_port: 53\n    proto: udp\n", `line 2: rules[0].proxy_protocol: missing (want v2 or none)`},
		{"transparent", "rules:\n  - proxy_protocol: transparent\n", `line 2: rules[0].proxy_protocol: transparent is not available in docker-proxy mode (want v2, v1 or none)`},
		{"v1 for udp", "rules:\n  - container_port: 5000\n    proxy_protocol: v2\n  - container_port: 514\n    proxy_protocol: v1\n    proto: udp\n",
			`line 5: rules[1].proxy_protocol: v1 has no UDP form (want v2 or none)`},
		{"v1 without proto", "rules:\n  - host_port: 8443\n    proxy_protocol: v1\n",
			`line 3: rules[0].proxy_protocol: v1 has no UDP form, and a rule without proto matches UDP too (want v2 or none, or add proto: tcp)`},
		{"v1 with a bad proto", "rules:\n  - proto: sctp\n    proxy_protocol: v1\n", `line 2: rules[0].proto: unknown proto "sctp" (want tcp or udp)`},
		{"bad level", "log:\n  level: loud\n", `line 1: log.level: unknown level "loud" (want one of trace, debug, info, warn, error, disabled)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDockerRules([]byte(tt.in))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err =\n%v\nwant\n%s", err, tt.want)
			}
		})
	}
}

// TestDockerRuleModes checks the modes a rule may ask for, by proto, in
// either key order.
func TestDockerRuleModes(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ProxyProtocol
	}{
		{"rules:\n  - proto: tcp\n    proxy_protocol: v1\n", ProxyV1},
		{"rules:\n  - proxy_protocol: v1\n    proto: tcp\n", ProxyV1},
		{"rules:\n  - proto: udp\n    proxy_protocol: v2\n", ProxyV2},
		{"rules:\n  - proto: udp\n    proxy_protocol: none\n", ProxyNone},
		{"rules:\n  - proxy_protocol: v2\n", ProxyV2},
	} {
		r, err := ParseDockerRules([]byte(tt.in))
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if got := r.Rules[0].ProxyProtocol; got != tt.want {
			t.Errorf("%q: mode %s, want %s", tt.in, got, tt.want)
		}
	}
}
