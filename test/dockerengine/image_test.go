package dockerengine

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Flags of the shipped Dockerfile's build stage and of make release. The
// test checks that the Dockerfile still says so, then builds with them.
const (
	stampVersion = "v0.0.0-ci"
	stampCommit  = "0123456789ab"
	buildFlags   = `go build -trimpath -buildvcs=false`
	ldflagsLine  = `-ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"`
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct{ op, args string }

// parseDockerfile splits a Dockerfile into its instructions.
func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(op), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// stage returns the instructions of the stage named name ("" for the
// last one), without its FROM.
func stage(t *testing.T, ins []instruction, name string) []instruction {
	t.Helper()
	start := -1
	for i, in := range ins {
		if in.op != "FROM" {
			continue
		}
		if name == "" || strings.HasSuffix(in.args, " AS "+name) {
			start = i
		}
	}
	if start < 0 {
		t.Fatalf("Dockerfile has no stage %q", name)
	}
	var out []instruction
	for _, in := range ins[start+1:] {
		if in.op == "FROM" {
			break
		}
		out = append(out, in)
	}
	return out
}

// scratchVariant writes, into ctx, a Dockerfile FROM scratch with the
// given stage's instructions: the binary from the build stage is copied
// from ctx instead, and each RUN (package installs) is replaced by extra,
// which must provide what it installed.
func scratchVariant(t *testing.T, ins []instruction, ctx string, extra string) {
	t.Helper()
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for _, in := range ins {
		switch {
		case in.op == "COPY" && strings.HasPrefix(in.args, "--from=build /out/bmpproxy "):
			df.WriteString("COPY bmpproxy " + strings.TrimPrefix(in.args, "--from=build /out/bmpproxy ") + "\n")
		case in.op == "RUN":
			if extra != "" {
				df.WriteString(extra + "\n")
				extra = ""
			}
		default:
			df.WriteString(in.op + " " + in.args + "\n")
		}
	}
	if err := os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// releaseBinary builds bmpproxy as the Dockerfile's build stage does,
// after checking that the Dockerfile still uses those flags, and checks
// that it is static.
func releaseBinary(t *testing.T, root, out string) {
	t.Helper()
	var build string
	for _, in := range stage(t, parseDockerfile(t, filepath.Join(root, "Dockerfile")), "build") {
		if in.op == "RUN" && strings.Contains(in.args, "go build") {
			build = strings.Join(strings.Fields(in.args), " ")
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", buildFlags, ldflagsLine} {
		if !strings.Contains(build, want) {
			t.Fatalf("the Dockerfile's build stage no longer says %q:\n%s", want, build)
		}
	}
	ldflags := strings.NewReplacer("${VERSION}", stampVersion, "${COMMIT}", stampCommit).Replace(
		strings.Trim(strings.TrimPrefix(ldflagsLine, "-ldflags "), `"`))
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd/bmpproxy")
	cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	// Static: file(1) says so, and ldd finds no dynamic section.
	if fo := must(t, 10*time.Second, "file", "-L", out); !strings.Contains(fo, "statically linked") {
		t.Fatalf("file: %s", fo)
	}
	if lo, err := run(t, 10*time.Second, "ldd", out); err == nil || !strings.Contains(lo, "not a dynamic executable") {
		t.Fatalf("ldd %s: %v %s", out, err, lo)
	}
}

// hostFiles copies binaries from this host, with the shared libraries
// ldd lists for them, under dir, at their own paths: a FROM scratch
// image can then run them.
func hostFiles(t *testing.T, dir string, bins ...string) {
	t.Helper()
	files := map[string]bool{}
	for _, b := range bins {
		files[b] = true
		out, _ := run(t, 10*time.Second, "ldd", b)
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "/") {
				files[f] = true
			}
		}
	}
	for f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// buildImages builds, in e, the local stand-ins of the shipped images:
// bmpproxy:latest (the Dockerfile's last stage, FROM scratch),
// bmpproxy:transparent (its transparent stage, FROM scratch with this
// host's ip and nft), and, when standin is set, an image of that name
// running "bmpproxy inspect" on ports, standing in for a collector.
func buildImages(t *testing.T, e *engine, dir string, standin string, ports ...string) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	ins := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	bin := filepath.Join(dir, "release", "bmpproxy")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	releaseBinary(t, root, bin)

	for _, img := range []struct{ tag, stage, extra string }{
		{"bmpproxy:latest", "", ""},
		{"bmpproxy:transparent", "transparent", "COPY root/ /"},
	} {
		ctx := filepath.Join(dir, "ctx-"+strings.ReplaceAll(img.tag, ":", "-"))
		os.MkdirAll(ctx, 0o755)
		link(t, bin, filepath.Join(ctx, "bmpproxy"))
		if img.extra != "" {
			ip, _ := exec.LookPath("ip")
			nft, _ := exec.LookPath("nft")
			hostFiles(t, filepath.Join(ctx, "root"), ip, nft)
		}
		scratchVariant(t, stage(t, ins, img.stage), ctx, img.extra)
		e.mustDocker(5*time.Minute, "build", "-q", "-t", img.tag, ctx)
	}
	if standin != "" {
		ctx := filepath.Join(dir, "ctx-standin")
		os.MkdirAll(ctx, 0o755)
		link(t, bin, filepath.Join(ctx, "bmpproxy"))
		args := []string{`"/bmpproxy"`, `"inspect"`, `"--json"`, `"--header-timeout"`, `"1s"`}
		for _, p := range ports {
			args = append(args, `"--listen"`, `"[::]:`+p+`"`)
		}
		os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\nCOPY bmpproxy /bmpproxy\nENTRYPOINT ["+strings.Join(args, ", ")+"]\n"), 0o644)
		e.mustDocker(5*time.Minute, "build", "-q", "-t", standin, ctx)
	}
}

func link(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Link(from, to); err != nil {
		t.Fatal(err)
	}
}

// TestScratchImage builds the FROM scratch variant of the shipped image
// around a binary built with the Dockerfile's flags, and checks what
// users rely on: static, the stamped --version, a non-root user, a
// default command that without a mounted config exits with status 2 and
// says what to mount and which mode to pick (the image ships none), and,
// with the OpenBMP example mounted, a HEALTHCHECK that turns healthy with
// only NET_BIND_SERVICE.
func TestScratchImage(t *testing.T) {
	if os.Getenv("BMPPROXY_DOCKER_E2E") != "1" {
		t.Skip("set BMPPROXY_DOCKER_E2E=1 to run a real dockerd (root, docker.io)")
	}
	ns, dir, _, _ := workspace(t, "[::]:"+port)
	e := startEngine(t, ns, dir, "/usr/sbin/docker-proxy", "")
	defer e.stop()
	buildImages(t, e, dir, "")

	v := strings.TrimSpace(e.mustDocker(60*time.Second, "run", "--rm", "bmpproxy:latest", "--version"))
	t.Logf("docker run bmpproxy:latest --version: %s", v)
	if f := strings.Fields(v); len(f) != 6 || f[1] != stampVersion || f[3] != stampCommit || !strings.HasPrefix(f[4], "go1.") {
		t.Fatalf("--version in the image printed %q; want %s, commit %s and the Go version", v, stampVersion, stampCommit)
	}
	var cfg struct {
		User        string
		Entrypoint  []string
		Cmd         []string
		Healthcheck struct{ Test []string }
	}
	if err := json.Unmarshal([]byte(e.mustDocker(10*time.Second, "inspect", "-f", "{{json .Config}}", "bmpproxy:latest")), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.User == "" || strings.HasPrefix(cfg.User, "0") || strings.HasPrefix(cfg.User, "root") {
		t.Errorf("image user %q; want a non-root user", cfg.User)
	}
	if !strings.Contains(strings.Join(cfg.Healthcheck.Test, " "), "bmpproxy healthcheck") {
		t.Errorf("image HEALTHCHECK %q; want bmpproxy healthcheck", cfg.Healthcheck.Test)
	}

	// The image as shipped, with nothing mounted: its default command
	// refuses to guess a collector.
	out, err := e.docker(60*time.Second, "run", "--rm", "bmpproxy:latest")
	for _, want := range []string{"exit status 2", "bmpproxy: config: open /etc/bmpproxy/bmpproxy.yaml: no such file or directory",
		"mount it: -v $PWD/bmpproxy.yaml:/etc/bmpproxy/bmpproxy.yaml:ro", "examples/openbmp-aio.yaml"} {
		if err == nil || !strings.Contains(out+err.Error(), want) {
			t.Fatalf("docker run bmpproxy:latest without a config: %v\n%s\nwant %q", err, out, want)
		}
	}
	t.Logf("docker run bmpproxy:latest without a config: exit status 2:\n%s", out)

	// Its default command with a config mounted, no capability but
	// NET_BIND_SERVICE, on the bridge network. The HEALTHCHECK's interval
	// is shortened; its command is the image's.
	root, _ := filepath.Abs("../..")
	e.mustDocker(60*time.Second, "run", "-d", "--name", "health", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
		"-v", filepath.Join(root, "examples", "openbmp-aio.yaml")+":/etc/bmpproxy/bmpproxy.yaml:ro",
		"--read-only", "--health-interval", "1s", "--health-start-period", "1s", "bmpproxy:latest")
	defer e.docker(30*time.Second, "rm", "-f", "health")
	deadline := time.Now().Add(60 * time.Second)
	for {
		status := strings.TrimSpace(e.mustDocker(10*time.Second, "inspect", "-f", "{{.State.Health.Status}}", "health"))
		if status == "healthy" {
			break
		}
		if time.Now().After(deadline) {
			logs, _ := e.docker(10*time.Second, "logs", "health")
			h, _ := e.docker(10*time.Second, "inspect", "-f", "{{json .State.Health}}", "health")
			t.Fatalf("container is %s, not healthy:\n%s\n%s", status, h, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("image %s: user %s, entrypoint %q, cmd %q, healthy", "bmpproxy:latest", cfg.User, cfg.Entrypoint, cfg.Cmd)
}
