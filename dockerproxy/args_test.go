package dockerproxy

import (
	"testing"
)

func TestIsInvocation(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{[]string{"-proto", "tcp", "-host-ip", "0.0.0.0"}, true},
		{[]string{"-v"}, true},
		{[]string{"-use-listen-fd"}, true},
		{[]string{"-host-port=5000"}, true},
		{[]string{"--listen", "[::]:5000", "--target", "c:5000"}, false},
		{[]string{"-l", "[::]:5000", "-t", "c:5000"}, false},
		{[]string{"inspect", "--listen", "[::1]:5001"}, false},
		{[]string{"--version"}, false},
		{nil, false},
	} {
		if got := IsInvocation(tt.args); got != tt.want {
			t.Errorf("IsInvocation(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestParseArgs(t *testing.T) {
	full := func(extra ...string) []string {
		return append([]string{"-proto", "tcp", "-host-ip", "::", "-host-port", "5000", "-container-ip", "172.17.0.2", "-container-port", "5000"}, extra...)
	}
	for _, tt := range []struct {
		name    string
		args    []string
		want    string // host → container, listen fd
		wantErr string
	}{
		{name: "dockerd 20.10", args: full(), want: "tcp [::]:5000 → 172.17.0.2:5000 false"},
		{name: "dockerd 28", args: full("-use-listen-fd"), want: "tcp [::]:5000 → 172.17.0.2:5000 true"},
		{name: "udp", args: []string{"-proto", "udp", "-host-ip", "0.0.0.0", "-host-port", "53", "-container-ip", "fd42::2", "-container-port", "53"}, want: "udp 0.0.0.0:53 → [fd42::2]:53 false"},
		{name: "bad proto", args: []string{"-proto", "icmp"}, wantErr: `-proto: unknown protocol "icmp" (want tcp, udp or sctp)`},
		{name: "bad host ip", args: []string{"-host-ip", "localhost", "-host-port", "1", "-container-ip", "::1", "-container-port", "2"}, wantErr: `-host-ip: "localhost" is not an IP address`},
		{name: "no container port", args: []string{"-host-ip", "::", "-host-port", "1", "-container-ip", "::1"}, wantErr: "-container-port is required"},
		{name: "container port 0", args: []string{"-host-ip", "::", "-host-port", "1", "-container-ip", "::1", "-container-port", "0"}, wantErr: "-container-port: invalid port 0"},
		{name: "port too big", args: []string{"-host-ip", "::", "-host-port", "70000", "-container-ip", "::1", "-container-port", "1"}, wantErr: "-host-port: invalid port 70000"},
		{name: "unknown flag", args: full("-bogus"), wantErr: "flag provided but not defined: -bogus"},
		{name: "extra argument", args: full("extra"), wantErr: `unexpected argument "extra"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := ParseArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := inv.Proto + " " + inv.Host.String() + " → " + inv.Container.String() + " " + map[bool]string{true: "true", false: "false"}[inv.UseListenFD]
			if got != tt.want {
				t.Fatalf("= %s, want %s", got, tt.want)
			}
		})
	}
}
