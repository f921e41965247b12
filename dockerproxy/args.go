// Package dockerproxy lets bmpproxy stand in for docker-proxy, started by
// dockerd as its userland-proxy-path. It speaks dockerd's protocol: the
// single-dash arguments, the status pipe on fd 3, the pre-bound socket on
// fd 4 with -use-listen-fd, and SIGINT to stop. Rules from a file decide
// which published ports get a PROXY header; with none, bmpproxy forwards
// exactly as docker-proxy does.
package dockerproxy

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
)

// Invocation is what dockerd asked for.
type Invocation struct {
	Proto       string // "tcp", "udp" or "sctp"
	Host        netip.AddrPort
	Container   netip.AddrPort
	UseListenFD bool // fd 4 is the listening socket, bound by dockerd
	Version     bool // -v: print the version and exit
}

// dockerFlags are the flag names dockerd passes; bmpproxy's own CLI uses
// none of them.
var dockerFlags = []string{"proto", "host-ip", "host-port", "container-ip", "container-port", "use-listen-fd"}

// IsInvocation reports whether args, without the program name, are
// dockerd's: they name one of its single-dash flags, or are just "-v".
func IsInvocation(args []string) bool {
	if len(args) == 1 && args[0] == "-v" {
		return true
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || strings.HasPrefix(a, "--") {
			continue
		}
		if name, _, _ := strings.Cut(a[1:], "="); slices.Contains(dockerFlags, name) {
			return true
		}
	}
	return false
}

// ParseArgs parses dockerd's arguments. Errors name the flag.
func ParseArgs(args []string) (Invocation, error) {
	var inv Invocation
	fs := flag.NewFlagSet("bmpproxy (docker-proxy mode)", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&inv.Proto, "proto", "tcp", "tcp, udp or sctp")
	hostIP := fs.String("host-ip", "", "host address")
	hostPort := fs.Int("host-port", -1, "host port")
	containerIP := fs.String("container-ip", "", "container address")
	containerPort := fs.Int("container-port", -1, "container port")
	fs.BoolVar(&inv.UseListenFD, "use-listen-fd", false, "fd 4 is the listening socket")
	fs.BoolVar(&inv.Version, "v", false, "print the version")
	if err := fs.Parse(args); err != nil {
		return inv, err
	}
	if inv.Version {
		return inv, nil
	}
	if fs.NArg() > 0 {
		return inv, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch inv.Proto {
	case "tcp", "udp", "sctp":
	default:
		return inv, fmt.Errorf("-proto: unknown protocol %q (want tcp, udp or sctp)", inv.Proto)
	}
	var err error
	if inv.Host, err = addrPort("-host-ip", *hostIP, "-host-port", *hostPort, true); err != nil {
		return inv, err
	}
	if inv.Container, err = addrPort("-container-ip", *containerIP, "-container-port", *containerPort, false); err != nil {
		return inv, err
	}
	return inv, nil
}

func addrPort(ipFlag, ip, portFlag string, port int, zeroOK bool) (netip.AddrPort, error) {
	if ip == "" {
		return netip.AddrPort{}, fmt.Errorf("%s is required", ipFlag)
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: %q is not an IP address", ipFlag, ip)
	}
	if port < 0 {
		return netip.AddrPort{}, fmt.Errorf("%s is required", portFlag)
	}
	if port > 65535 || port == 0 && !zeroOK {
		return netip.AddrPort{}, fmt.Errorf("%s: invalid port %d", portFlag, port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// errSCTP is reported to dockerd for -proto sctp.
var errSCTP = errors.New("sctp is not supported")
