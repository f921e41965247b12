// Package netns builds network namespaces for tests: a router, a proxy
// host ("hub") and a collector, linked and routed so that the router and
// the collector reach each other only through the hub. Nothing in the
// machine's own namespace changes, and everything is removed at cleanup.
// It needs root and ip; without them New skips the test.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Addresses of a Topology, from documentation prefixes: each link has an
// IPv6 /64 and an IPv4 /26, the hub's end first.
const (
	HubR6, Rtr6 = "2001:db8:41::1", "2001:db8:41::2" // hub ↔ router
	HubR4, Rtr4 = "198.51.100.129", "198.51.100.130"
	HubC6, Col6 = "2001:db8:42::1", "2001:db8:42::2" // hub ↔ collector
	HubC4, Col4 = "203.0.113.129", "203.0.113.130"
)

// Topology names three namespaces. Rtr (eth0) and Col (eth0) are linked
// to Hub (to-rtr, to-col), which forwards IPv4 and IPv6 between them; the
// router's and the collector's default routes point at the hub. Each has
// its loopback up.
type Topology struct {
	Hub, Rtr, Col string
}

// New creates a Topology whose namespace names start with prefix, and
// deletes it at cleanup. It skips t without root or ip.
func New(t testing.TB, prefix string) *Topology {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) is missing")
	}
	var b [2]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	tp := &Topology{Hub: prefix + "-hub-" + id, Rtr: prefix + "-rtr-" + id, Col: prefix + "-col-" + id}
	for _, ns := range []string{tp.Hub, tp.Rtr, tp.Col} {
		Sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		Sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	link := func(a, aif, b, bif string) {
		Sh(t, "ip", "-n", a, "link", "add", aif, "type", "veth", "peer", "name", bif, "netns", b)
		Sh(t, "ip", "-n", a, "link", "set", aif, "up")
		Sh(t, "ip", "-n", b, "link", "set", bif, "up")
	}
	link(tp.Hub, "to-rtr", tp.Rtr, "eth0")
	link(tp.Hub, "to-col", tp.Col, "eth0")
	addr := func(ns, dev string, addrs ...string) {
		for _, a := range addrs {
			if strings.Contains(a, ":") {
				Sh(t, "ip", "-n", ns, "addr", "add", a, "dev", dev, "nodad")
			} else {
				Sh(t, "ip", "-n", ns, "addr", "add", a, "dev", dev)
			}
		}
	}
	addr(tp.Hub, "to-rtr", HubR6+"/64", HubR4+"/26")
	addr(tp.Hub, "to-col", HubC6+"/64", HubC4+"/26")
	addr(tp.Rtr, "eth0", Rtr6+"/64", Rtr4+"/26")
	addr(tp.Col, "eth0", Col6+"/64", Col4+"/26")
	Sh(t, "ip", "-n", tp.Rtr, "route", "add", "default", "via", HubR4)
	Sh(t, "ip", "-n", tp.Rtr, "-6", "route", "add", "default", "via", HubR6)
	// The collector's replies to the router go through the hub.
	Sh(t, "ip", "-n", tp.Col, "route", "add", "default", "via", HubC4)
	Sh(t, "ip", "-n", tp.Col, "-6", "route", "add", "default", "via", HubC6)
	Sh(t, "ip", "netns", "exec", tp.Hub, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return tp
}

// Sh runs a command and returns its output; it fails t, with the
// output, if the command fails.
func Sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs f on a thread in network namespace ns and returns when f has.
// Sockets f creates stay in ns. f must not call t.FailNow (t.Fatal):
// it runs on a goroutine of its own. The thread goes back to its own namespace
// afterwards and serves other goroutines again; only if it cannot is it
// discarded. (Ending threads would kill every child that a thread started
// with Pdeathsig: the signal follows the thread, not the process.)
func Do(t testing.TB, ns string, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("back from namespace %s: %w", ns, err) // the thread stays locked and ends
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
