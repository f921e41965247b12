package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/testtarget"
)

// TestHealthcheck runs "bmpproxy healthcheck", the container
// HEALTHCHECK, against a running bmpproxy's admin listener, then against
// nothing.
func TestHealthcheck(t *testing.T) {
	tg := testtarget.New(t, testtarget.V2, nil)
	p := start(t, 1, "--listen", "127.0.0.1:0", "--target", tg.Addr(), "--admin-listen", "127.0.0.1:0")
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	for _, path := range []string{"/healthz", "/readyz"} {
		out, err := exec.Command(binPath(), "healthcheck", "--url", admin+path).CombinedOutput()
		if err != nil || !strings.Contains(string(out), path) {
			t.Errorf("healthcheck %s: %v\n%s", path, err, out)
		}
	}
	// The URL from the environment, as a container would set it.
	cmd := exec.Command(binPath(), "healthcheck")
	cmd.Env = append(os.Environ(), "BMPPROXY_HEALTHCHECK_URL="+admin+"/healthz")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("healthcheck with BMPPROXY_HEALTHCHECK_URL: %v\n%s", err, out)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
	out, err := exec.Command(binPath(), "healthcheck", "--url", admin+"/healthz", "--timeout", "1s").CombinedOutput()
	if code := exitCode(err); code != exitError {
		t.Errorf("healthcheck of a stopped bmpproxy: exit %d, want %d\n%s", code, exitError, out)
	}
	out, err = exec.Command(binPath(), "healthcheck", "--url", "ftp://x").CombinedOutput()
	if code := exitCode(err); code != exitUsage {
		t.Errorf("healthcheck --url ftp://x: exit %d, want %d\n%s", code, exitUsage, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestStampedVersion builds the binary as make release and the Dockerfile
// do, and checks that --version prints the stamped version and commit and
// the Go version.
func TestStampedVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bmpproxy")
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version=v9.8.7-test -X main.commit=0123456789ab", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	// bmpproxy v9.8.7-test commit 0123456789ab go1.26.8 linux/amd64
	if len(got) != 6 || got[1] != "v9.8.7-test" || got[3] != "0123456789ab" || !strings.HasPrefix(got[4], "go1.") {
		t.Fatalf("--version printed %q", out)
	}
}

// TestAdminClientUsesNoProxy: the client of "bmpproxy healthcheck" and
// "bmpproxy upgrade --admin" asks no proxy named by HTTP_PROXY and the
// like. (On loopback net/http bypasses such a proxy anyway, so a request
// from a test could not tell.)
func TestAdminClientUsesNoProxy(t *testing.T) {
	c := directHTTPClient(time.Second)
	if tr, ok := c.Transport.(*http.Transport); !ok || tr.Proxy != nil {
		t.Fatalf("admin client transport %#v: want an *http.Transport with no Proxy", c.Transport)
	}
	if c.Timeout != time.Second {
		t.Errorf("admin client timeout %s, want 1s", c.Timeout)
	}
}
