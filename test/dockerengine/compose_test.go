package dockerengine

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const composeFile = "deploy/compose/openbmp-aio.yaml"

// compose runs docker-compose on the shipped file against e, with env
// added to the environment.
func compose(t *testing.T, e *engine, project string, env []string, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-compose", append([]string{"-p", project, "-f", filepath.Join(root, composeFile)}, args...)...)
	cmd.Env = append(append(os.Environ(), "DOCKER_HOST=unix://"+e.sock), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker-compose %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// sendFile connects from src to dst:p inside ns and sends the file.
func sendFile(t *testing.T, ns, src, dst, p, file string) {
	t.Helper()
	socatSend(t, ns, src, dst, p, "OPEN:"+file, nil)
}

// TestComposeOpenBMP runs deploy/compose/openbmp-aio.yaml for real with
// docker-compose on a private dockerd: the images are the local FROM
// scratch stand-ins of bmpproxy:latest and bmpproxy:transparent, and
// "bmpproxy inspect" stands in for the AIO's collector. Routers connect
// over IPv6 and IPv4 to the host's port 5000, which is not published; the
// stand-in collector must see each router's own address. Port 8001 must
// reach it without a header.
func TestComposeOpenBMP(t *testing.T) {
	if os.Getenv("BMPPROXY_DOCKER_E2E") != "1" {
		t.Skip("set BMPPROXY_DOCKER_E2E=1 to run a real dockerd (root, docker.io, docker-compose, socat)")
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatal("docker-compose is missing: install Debian's docker-compose")
	}
	ns, dir, _, _ := workspace(t, "[::]:"+port)
	in := func(args ...string) { must(t, 10*time.Second, "ip", append([]string{"-n", ns}, args...)...) }
	for _, a := range []string{clientV6 + "/128", serverV6 + "/128", clientV4 + "/32", serverV4 + "/32"} {
		in("addr", "add", a, "dev", "lo")
	}
	e := startEngine(t, ns, dir, "/usr/sbin/docker-proxy", "")
	defer e.stop()
	buildImages(t, e, dir, "openbmp-standin", "5000", "8001")

	const project = "bmpxcompose"
	env := []string{"OPENBMP_AIO_IMAGE=openbmp-standin", "KAFKA_FQDN=localhost"}
	if out, err := compose(t, e, project, env, 60*time.Second, "config", "-q"); err != nil {
		t.Fatalf("compose file does not validate: %v\n%s", err, out)
	}
	defer func() {
		if t.Failed() {
			out, _ := compose(t, e, project, env, 60*time.Second, "logs", "--no-color")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if out, err := compose(t, e, project, env, 2*time.Minute, "down", "-v", "--remove-orphans"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	}()
	if _, err := compose(t, e, project, env, 3*time.Minute, "up", "-d", "--no-build"); err != nil {
		t.Fatal(err)
	}
	id := func(service string) string {
		out, err := compose(t, e, project, env, 30*time.Second, "ps", "-q", service)
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("no container for %s: %v %s", service, err, out)
		}
		return strings.TrimSpace(out)
	}
	collector, host, inner := id("openbmp-aio"), id("bmpproxy"), id("bmp-inner")
	// Both bmpproxies up: the host's with its five listeners, the inner
	// one with its one (after transparent_setup).
	for _, w := range []struct {
		c string
		n int
	}{{host, 5}, {inner, 1}} {
		deadline := time.Now().Add(60 * time.Second)
		for {
			logs, _ := e.docker(10*time.Second, "logs", w.c)
			if strings.Count(logs, `"message":"listening"`) >= w.n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("bmpproxy %s did not start %d listeners:\n%s", w.c, w.n, logs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	root, _ := filepath.Abs("../..")
	initiation := filepath.Join(root, "bmp", "testdata", "frr-8.4-bmp-initiation.bin")
	plain := filepath.Join(dir, "plain.txt")
	os.WriteFile(plain, []byte("GET / HTTP/1.0\r\n\r\n"), 0o644)
	type conn struct{ src, dst, port, file string }
	conns := []conn{
		{clientV6, serverV6, "5000", initiation},
		{clientV4, serverV4, "5000", initiation},
		{clientV6, serverV6, "8001", plain},
	}
	var got []seen
	for i, c := range conns {
		sendFile(t, ns, c.src, c.dst, c.port, c.file)
		deadline := time.Now().Add(30 * time.Second)
		for got = reports(e, collector); len(got) < i+1; got = reports(e, collector) {
			if time.Now().After(deadline) {
				t.Fatalf("stand-in collector reported %d connections, want %d: %+v", len(got), i+1, got)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}

	var table strings.Builder
	table.WriteString("| router | host port | stand-in collector saw |\n|---|---|---|\n")
	for i, c := range conns {
		fmt.Fprintf(&table, "| %s | %s | %s (bytes %d) |\n", c.src, c.port, got[i], got[i].Bytes)
	}
	t.Logf("deploy/compose/openbmp-aio.yaml with docker-compose (%s):\n%s",
		strings.TrimSpace(must(t, 10*time.Second, "docker-compose", "version", "--short")), table.String())
	fmt.Print(table.String())

	initLen := fileSize(t, initiation)
	for i, want := range []string{"[" + clientV6 + "]:", clientV4 + ":"} {
		s := got[i]
		if !strings.HasPrefix(s.Peer, want) && !strings.HasPrefix(s.Peer, "[::ffff:"+strings.TrimSuffix(want, ":")+"]:") {
			t.Errorf("router %s: the collector saw %s; want the router's own address", conns[i].src, s.Peer)
		}
		if s.Proxy != "none" && s.Proxy != "" {
			t.Errorf("router %s: the collector got a %s header; the inner hop sends none", conns[i].src, s.Proxy)
		}
		if s.Bytes != initLen {
			t.Errorf("router %s: the collector got %d bytes, want the %d of the Initiation", conns[i].src, s.Bytes, initLen)
		}
	}
	if s := got[2]; s.Proxy != "none" && s.Proxy != "" {
		t.Errorf("port 8001 arrived with a %s header; want none", s.Proxy)
	}
}

func fileSize(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Size())
}
