// Package dockerengine runs bmpproxy as the userland proxy of a real Docker
// Engine (Debian's docker.io), started for the test inside a network
// namespace of its own, and compares it with the stock docker-proxy.
//
// It needs root, dockerd, socat and nsenter, and runs only with
// BMPPROXY_DOCKER_E2E=1 (.ci/run sets it), since it takes about a minute.
package dockerengine

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	docker  = "/usr/bin/docker"
	dockerd = "/usr/sbin/dockerd"
	// Addresses: documentation prefixes for the clients, and networks
	// that nothing on this machine uses (checked with ip route) for
	// Docker. fd00::/64 and 192.0.2.0/24 belong to the uplink here.
	clientV6, serverV6 = "2001:db8:d::1", "2001:db8:d::2"
	clientV4, serverV4 = "198.51.100.1", "198.51.100.2"
	bridgeIP           = "172.31.250.1/24"
	networkV4          = "172.31.251.0/24"
	fixedCIDRv6        = "fd42:d0c::/64"
	port               = "5000"
)

// engine is one dockerd in the test's namespace.
type engine struct {
	t    *testing.T
	ns   string
	dir  string
	sock string
	cmd  *exec.Cmd
}

func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func must(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startEngine starts dockerd with proxyPath as its userland proxy and
// rules (for bmpproxy) in BMPPROXY_CONFIG.
func startEngine(t *testing.T, ns, dir, proxyPath, rules string) *engine {
	t.Helper()
	e := &engine{t: t, ns: ns, dir: dir, sock: filepath.Join(dir, "docker.sock")}
	cfg := map[string]any{
		"data-root":           filepath.Join(dir, "data"),
		"exec-root":           filepath.Join(dir, "exec"),
		"pidfile":             filepath.Join(dir, "docker.pid"),
		"hosts":               []string{"unix://" + e.sock},
		"storage-driver":      "vfs",
		"ipv6":                true,
		"fixed-cidr-v6":       fixedCIDRv6,
		"bip":                 bridgeIP,
		"userland-proxy":      true,
		"userland-proxy-path": proxyPath,
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command("nsenter", "--net=/var/run/netns/"+ns, dockerd, "--config-file", cfgPath)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.Env = append(os.Environ(), "BMPPROXY_CONFIG="+rules)
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.docker(10*time.Second, "info"); err == nil {
			return e
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			e.stop()
			t.Fatalf("dockerd did not come up:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *engine) docker(timeout time.Duration, args ...string) (string, error) {
	return run(e.t, timeout, docker, append([]string{"-H", "unix://" + e.sock}, args...)...)
}

func (e *engine) mustDocker(timeout time.Duration, args ...string) string {
	e.t.Helper()
	out, err := e.docker(timeout, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// stop ends dockerd (and the containerd it started) and waits.
func (e *engine) stop() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	syscall.Kill(-e.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	e.cmd = nil
}

// seen is what the inspector in the container reported for a connection.
type seen struct {
	Proxy string `json:"proxy"`
	Src   string `json:"src"`
	Peer  string `json:"peer"`
	Bytes int    `json:"bytes"`
}

func (s seen) String() string {
	if s.Proxy == "none" || s.Proxy == "" {
		return s.Peer + " (no header)"
	}
	return s.Src + " (PROXY " + s.Proxy + ")"
}

// reports returns what the stand-in collector in container printed so
// far.
func reports(e *engine, container string) []seen {
	logs, _ := e.docker(10*time.Second, "logs", container)
	var out []seen
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var s seen
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.Peer != "" {
			out = append(out, s)
		}
	}
	return out
}

// connect sends one line from src to dst:port inside the namespace.
func connect(t *testing.T, ns, src, dst, msg string) {
	t.Helper()
	socatSend(t, ns, src, dst, port, "-", strings.NewReader(msg))
}

// socatSend connects from src to dst:p inside ns with socat and sends
// what socat reads from the address from (stdin for "-").
func socatSend(t *testing.T, ns, src, dst, p, from string, stdin io.Reader) {
	t.Helper()
	target := fmt.Sprintf("TCP6:[%s]:%s,bind=[%s]", dst, p, src)
	if !strings.Contains(dst, ":") {
		target = fmt.Sprintf("TCP4:%s:%s,bind=%s", dst, p, src)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+ns, "socat", "-u", from, target)
	cmd.Stdin = stdin
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("connect %s → %s:%s: %v\n%s", src, dst, p, err, out)
	}
}

// observe runs the collector container behind the published port, makes
// one connection per client and returns what the collector saw for each.
func observe(t *testing.T, e *engine, clients []string) map[string]seen {
	t.Helper()
	e.mustDocker(30*time.Second, "network", "create", "--subnet", networkV4, "v4only")
	defer e.docker(30*time.Second, "network", "rm", "v4only")
	e.mustDocker(60*time.Second, "run", "-d", "--name", "collector", "--network", "v4only",
		"-p", port+":"+port, "bmpproxy-inspect")
	defer e.docker(30*time.Second, "rm", "-f", "collector")
	got := map[string]seen{}
	for _, c := range clients {
		dst := serverV6
		if c == clientV4 {
			dst = serverV4
		}
		var lines []seen
		deadline := time.Now().Add(20 * time.Second)
		for len(lines) < len(got)+1 {
			if len(lines) == len(got) {
				connect(t, e.ns, c, dst, "hello from "+c+"\n")
			}
			time.Sleep(300 * time.Millisecond)
			lines = reports(e, "collector")
			if time.Now().After(deadline) {
				logs, _ := e.docker(10*time.Second, "logs", "collector")
				t.Fatalf("collector reported %d connections, want %d:\n%s", len(lines), len(got)+1, logs)
			}
		}
		got[c] = lines[len(got)]
	}
	return got
}

func TestRealDockerEngine(t *testing.T) {
	if os.Getenv("BMPPROXY_DOCKER_E2E") != "1" {
		t.Skip("set BMPPROXY_DOCKER_E2E=1 to run a real dockerd (root, docker.io, socat)")
	}
	for _, bin := range []string{dockerd, docker, "/usr/bin/socat", "/usr/sbin/docker-proxy"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s is missing: install docker.io and socat", bin)
		}
	}
	ns, dir, build, proxyBin := workspace(t, "0.0.0.0:"+port)
	in := func(args ...string) { must(t, 10*time.Second, "ip", append([]string{"-n", ns}, args...)...) }
	// The clients and the address they connect to live on the
	// namespace's loopback device: traffic stays in the namespace.
	for _, a := range []string{clientV6 + "/128", serverV6 + "/128", clientV4 + "/32", serverV4 + "/32"} {
		in("addr", "add", a, "dev", "lo")
	}
	rules := filepath.Join(dir, "docker.yaml")
	os.WriteFile(rules, []byte("log:\n  file: "+filepath.Join(dir, "bmpproxy.log")+"\nrules:\n  - container_port: "+port+"\n    proxy_protocol: v2\n"), 0o644)

	clients := []string{clientV6, clientV4}
	results := map[string]map[string]seen{}
	for _, p := range []struct{ name, path string }{{"docker-proxy", "/usr/sbin/docker-proxy"}, {"bmpproxy", proxyBin}} {
		e := startEngine(t, ns, dir, p.path, rules)
		func() {
			defer e.stop()
			if p.name == "docker-proxy" {
				e.mustDocker(5*time.Minute, "build", "-q", "-t", "bmpproxy-inspect", build)
			}
			results[p.name] = observe(t, e, clients)
		}()
	}

	var table strings.Builder
	table.WriteString("| client | collector saw, with docker-proxy | collector saw, with bmpproxy |\n|---|---|---|\n")
	for _, c := range clients {
		fmt.Fprintf(&table, "| %s | %s | %s |\n", c, results["docker-proxy"][c], results["bmpproxy"][c])
	}
	t.Logf("real Docker Engine (%s), container on an IPv4-only network:\n%s", strings.TrimSpace(must(t, 10*time.Second, dockerd, "--version")), table.String())
	fmt.Print(table.String())

	// docker-proxy hides the IPv6 router behind the bridge gateway.
	if s := results["docker-proxy"][clientV6]; s.Proxy != "none" || strings.Contains(s.Peer, clientV6) {
		t.Errorf("docker-proxy: IPv6 client arrived as %v; expected it hidden", s)
	}
	// bmpproxy passes it on in the header.
	if s := results["bmpproxy"][clientV6]; s.Proxy != "v2" || s.Src != "["+clientV6+"]" && !strings.HasPrefix(s.Src, "["+clientV6+"]:") {
		t.Errorf("bmpproxy: IPv6 client arrived as %v; want %s in a v2 header", s, clientV6)
	}
}

// workspace creates a network namespace and a short work directory, both
// removed at cleanup, builds a static bmpproxy into it, and writes a
// Dockerfile for an image FROM scratch running "bmpproxy inspect" on
// listen. It returns the namespace, the directory, the build context and
// the binary.
func workspace(t *testing.T, listen string) (ns, dir, build, bin string) {
	t.Helper()
	var suffix [3]byte
	rand.Read(suffix[:])
	id := hex.EncodeToString(suffix[:])
	ns = "bmpx-dock-" + id
	dir = "/tmp/bxd-" + id // short: unix socket paths under it must fit 108 bytes
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	must(t, 10*time.Second, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		run(t, 10*time.Second, "ip", "netns", "del", ns)
		// Mounts dockerd may have left (netns bind mounts), then the files.
		run(t, 10*time.Second, "sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l")
		os.RemoveAll(dir)
	})
	must(t, 10*time.Second, "ip", "-n", ns, "link", "set", "lo", "up")

	build = filepath.Join(dir, "build")
	os.MkdirAll(build, 0o755)
	root, _ := filepath.Abs("../..")
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(build, "bmpproxy"), "./cmd/bmpproxy")
	cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(build, "Dockerfile"), []byte("FROM scratch\nCOPY bmpproxy /bmpproxy\n"+
		`ENTRYPOINT ["/bmpproxy", "inspect", "--listen", "`+listen+`", "--json", "--header-timeout", "1s"]`+"\n"), 0o644)
	bin = filepath.Join(dir, "bmpproxy")
	if err := os.Link(filepath.Join(build, "bmpproxy"), bin); err != nil {
		t.Fatal(err)
	}
	return ns, dir, build, bin
}

// TestTransparentDockerBridge runs bmpproxy transparently on the host
// side of a real Docker bridge: a router in its own namespace reaches
// bmpproxy in dockerd's namespace, which dials the collector container
// from the router's address. The container, built FROM scratch around
// "bmpproxy inspect" with no PROXY header, must see the router itself.
func TestTransparentDockerBridge(t *testing.T) {
	if os.Getenv("BMPPROXY_DOCKER_E2E") != "1" {
		t.Skip("set BMPPROXY_DOCKER_E2E=1 to run a real dockerd (root, docker.io, socat)")
	}
	const (
		hostR6, rtr6 = "2001:db8:51::1", "2001:db8:51::2"
		hostR4, rtr4 = "198.51.100.193", "198.51.100.194"
	)
	ns, dir, build, proxyBin := workspace(t, "[::]:"+port)
	rtr := ns + "-r"
	must(t, 10*time.Second, "ip", "netns", "add", rtr)
	t.Cleanup(func() { run(t, 10*time.Second, "ip", "netns", "del", rtr) })
	ip := func(args ...string) { must(t, 10*time.Second, "ip", args...) }
	ip("-n", ns, "link", "add", "to-rtr", "type", "veth", "peer", "name", "eth0", "netns", rtr)
	ip("-n", ns, "addr", "add", hostR6+"/64", "dev", "to-rtr", "nodad")
	ip("-n", ns, "addr", "add", hostR4+"/26", "dev", "to-rtr")
	ip("-n", ns, "link", "set", "to-rtr", "up")
	ip("-n", rtr, "link", "set", "lo", "up")
	ip("-n", rtr, "addr", "add", rtr6+"/64", "dev", "eth0", "nodad")
	ip("-n", rtr, "addr", "add", rtr4+"/26", "dev", "eth0")
	ip("-n", rtr, "link", "set", "eth0", "up")
	ip("-n", rtr, "route", "add", "default", "via", hostR4)
	ip("-n", rtr, "-6", "route", "add", "default", "via", hostR6)

	e := startEngine(t, ns, dir, "/usr/sbin/docker-proxy", "")
	defer e.stop()
	e.mustDocker(5*time.Minute, "build", "-q", "-t", "bmpproxy-inspect6", build)
	e.mustDocker(60*time.Second, "run", "-d", "--name", "collector", "bmpproxy-inspect6")
	defer e.docker(30*time.Second, "rm", "-f", "collector")
	addrs := strings.Fields(e.mustDocker(10*time.Second, "inspect", "-f",
		"{{.NetworkSettings.IPAddress}} {{.NetworkSettings.GlobalIPv6Address}}", "collector"))
	if len(addrs) != 2 {
		t.Fatalf("container addresses %q: want IPv4 and IPv6", addrs)
	}
	c4, c6 := addrs[0], addrs[1]

	must(t, 30*time.Second, "ip", "netns", "exec", ns, proxyBin, "transparent-setup", "--case", "docker", "--apply")
	cfg := filepath.Join(dir, "bmpproxy.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listeners:
  - name: v6
    listen: "[%s]:%s"
    target: "[%s]:%s"
    proxy_protocol: transparent
  - name: v4
    listen: "%s:%s"
    target: "%s:%s"
    proxy_protocol: transparent
`, hostR6, port, c6, port, hostR4, port, c4, port)), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "bmpproxy.log"))
	proxy := exec.Command("nsenter", "--net=/var/run/netns/"+ns, proxyBin, "--config", cfg)
	proxy.Stdout, proxy.Stderr = logf, logf
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { proxy.Process.Kill(); proxy.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(logf.Name())
		if strings.Count(string(b), `"message":"listening"`) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bmpproxy did not start:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, c := range []struct{ src, dst string }{{rtr6, hostR6}, {rtr4, hostR4}} {
		connect(t, rtr, c.src, c.dst, "hello from "+c.src+"\n")
	}
	var got []seen
	deadline = time.Now().Add(20 * time.Second)
	for len(got) < 2 {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("collector reported %v\nbmpproxy:\n%s", got, b)
		}
		time.Sleep(300 * time.Millisecond)
		got = reports(e, "collector")
	}
	t.Logf("collector container saw: %s and %s", got[0].Peer, got[1].Peer)
	fmt.Printf("| transparent via a Docker bridge | %s | %s |\n", got[0].Peer, got[1].Peer)
	var saw6, saw4 bool
	for _, s := range got {
		saw6 = saw6 || strings.HasPrefix(s.Peer, "["+rtr6+"]:")
		saw4 = saw4 || strings.HasPrefix(s.Peer, rtr4+":")
		if s.Proxy != "none" && s.Proxy != "" {
			t.Errorf("collector saw a %s header; transparent sends none", s.Proxy)
		}
	}
	if !saw6 || !saw4 {
		t.Fatalf("collector saw %+v; want the routers' own addresses", got)
	}
	must(t, 30*time.Second, "ip", "netns", "exec", ns, proxyBin, "transparent-setup", "--case", "docker", "--remove")
}
