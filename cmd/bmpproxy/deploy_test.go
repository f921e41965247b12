package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// invocation is how a shipped deployment file starts bmpproxy.
type invocation struct {
	where  string            // file and unit, service or container
	args   []string          // the arguments after the program
	health []string          // the health check's arguments, if the file has one
	files  map[string]string // config paths in the container → files in the repository
	// secrets are the arguments that name a file of a Kubernetes Secret
	// volume, with the file's mode and group as the kubelet makes them.
	secrets map[string]secretFile
	// before are the arguments of bmpproxy commands that run first, to
	// completion, in the same network namespace: a Pod's init containers.
	before [][]string
}

// resolve returns inv's arguments with each config path replaced by
// config(the repository file the deployment puts there), and each Secret's
// file by a stand-in with the owner and mode the kubelet gives it. A
// --config that names no file the deployment provides fails t.
func (inv invocation) resolve(t *testing.T, config func(rel string) string) []string {
	t.Helper()
	args := append([]string(nil), inv.args...)
	for i, a := range args {
		if f, ok := inv.files[a]; ok {
			args[i] = config(f)
		} else if s, ok := inv.secrets[a]; ok {
			args[i] = s.write(t, t.TempDir(), filepath.Base(a))
		} else if i > 0 && (args[i-1] == "--config" || args[i-1] == "-c") {
			t.Fatalf("%s: --config %s is not a file the deployment provides (%v)", inv.where, a, inv.files)
		}
	}
	return args
}

// secretFile is a file of a Secret volume: the kubelet writes it as root
// with the volume's defaultMode; with the Pod's fsGroup it gives the file
// that group and adds group read (0440).
type secretFile struct {
	mode os.FileMode
	gid  int
}

// write makes a stand-in for the file in dir, owned by root and the
// file's group, and returns its path.
func (s secretFile) write(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("deployed-arguments-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, s.gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, s.mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// deployRoot is the repository, seen from this package.
const deployRoot = "../.."

// systemdInvocations reads ExecStart from the unit files. The unit runs
// the config of the OpenBMP example (README: systemd).
func systemdInvocations(t *testing.T) []invocation {
	t.Helper()
	units, _ := filepath.Glob(filepath.Join(deployRoot, "deploy/systemd/*.service"))
	var out []invocation
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStart="); ok {
				f := strings.Fields(v)
				if len(f) == 0 || filepath.Base(f[0]) != "bmpproxy" {
					t.Fatalf("%s: ExecStart=%s does not run bmpproxy", u, v)
				}
				out = append(out, invocation{where: rel(u), args: f[1:],
					files: map[string]string{"/etc/bmpproxy/bmpproxy.yaml": "examples/openbmp-aio.yaml"}})
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no ExecStart in deploy/systemd")
	}
	return out
}

// dockerfileInvocations reads ENTRYPOINT, CMD and HEALTHCHECK of each
// stage that runs bmpproxy; COPY lines map config paths to repository files.
func dockerfileInvocations(t *testing.T) []invocation {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []invocation
	var cur *invocation
	var entry []string
	flush := func() {
		if cur != nil && len(entry) > 0 {
			if filepath.Base(entry[0]) != "bmpproxy" {
				t.Fatalf("Dockerfile %s: ENTRYPOINT %q does not run bmpproxy", cur.where, entry)
			}
			cur.args = append(entry[1:], cur.args...)
			out = append(out, *cur)
		}
		cur, entry = nil, nil
	}
	execForm := func(s string) []string {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("Dockerfile: %q is not an exec-form (JSON) list: %v", s, err)
		}
		return v
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var line string
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasSuffix(l, `\`) {
			line += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		line += l
		op, rest, _ := strings.Cut(line, " ")
		line = ""
		switch strings.ToUpper(op) {
		case "FROM":
			flush()
			cur = &invocation{where: "Dockerfile stage " + rest, files: map[string]string{}}
		case "COPY":
			if f := strings.Fields(rest); len(f) == 2 && !strings.HasPrefix(f[0], "--") {
				cur.files[f[1]] = f[0]
			}
		case "ENTRYPOINT":
			entry = execForm(rest)
		case "CMD":
			cur.args = execForm(rest)
		case "HEALTHCHECK":
			_, c, ok := strings.Cut(rest, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile: HEALTHCHECK without CMD: %s", rest)
			}
			h := execForm(c)
			if filepath.Base(h[0]) != "bmpproxy" {
				t.Fatalf("Dockerfile: HEALTHCHECK %q does not run bmpproxy", h)
			}
			cur.health = h[1:]
		}
	}
	flush()
	for i := range out {
		// No target ships a config, which could only guess the collector
		// (a header to one that reads none drops every router).
		// deploy/compose mounts bmp-inner's into the transparent one and
		// the host's into the default one.
		for dst, src := range out[i].files {
			if strings.HasPrefix(dst, "/etc/bmpproxy/") {
				t.Fatalf("Dockerfile %s: COPY %s %s ships a config; the image must ship none", out[i].where, src, dst)
			}
		}
		out[i].files["/etc/bmpproxy/bmpproxy.yaml"] = "deploy/compose/bmpproxy.yaml"
		if strings.HasSuffix(out[i].where, " AS transparent") {
			out[i].files["/etc/bmpproxy/bmpproxy.yaml"] = "deploy/compose/bmpproxy-inner.yaml"
		}
	}
	if len(out) < 2 {
		t.Fatalf("Dockerfile: %d stages run bmpproxy, want the default and the transparent one", len(out))
	}
	return out
}

// composeInvocations reads each bmpproxy service's command; its volumes
// map config paths to repository files.
func composeInvocations(t *testing.T) []invocation {
	t.Helper()
	path := filepath.Join(deployRoot, "deploy/compose/openbmp-aio.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			Image       string
			Command     []string
			Volumes     []string
			Healthcheck struct{ Test []string }
		}
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []invocation
	for name, s := range f.Services {
		if !strings.HasPrefix(s.Image, "bmpproxy") {
			continue
		}
		inv := invocation{where: rel(path) + " service " + name, args: s.Command, files: map[string]string{}}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") {
				inv.files[parts[1]] = filepath.ToSlash(filepath.Join("deploy/compose", parts[0]))
			}
		}
		if len(s.Healthcheck.Test) > 1 {
			inv.health = s.Healthcheck.Test[2:] // ["CMD", "/usr/local/bin/bmpproxy", ...]
		}
		out = append(out, inv)
	}
	if len(out) != 2 {
		t.Fatalf("%s: %d bmpproxy services, want the host's and bmp-inner", path, len(out))
	}
	return out
}

// kubernetesInvocations reads command and args of each bmpproxy container.
func kubernetesInvocations(t *testing.T) []invocation {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(deployRoot, "deploy/kubernetes/*.yaml"))
	var out []invocation
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		type container struct {
			Name, Image   string
			Command, Args []string
			VolumeMounts  []struct {
				Name      string
				MountPath string `yaml:"mountPath"`
			} `yaml:"volumeMounts"`
		}
		// bmpproxyArgs returns c's arguments after the program, if c runs bmpproxy.
		bmpproxyArgs := func(c container) ([]string, bool) {
			if !strings.HasPrefix(c.Image, "bmpproxy") {
				return nil, false
			}
			if len(c.Command) == 0 {
				return c.Args, true
			}
			// A command replaces the ENTRYPOINT.
			if filepath.Base(c.Command[0]) != "bmpproxy" {
				t.Fatalf("%s: container %s runs %q", path, c.Name, c.Command)
			}
			return append(c.Command[1:], c.Args...), true
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc struct {
				Kind     string
				Metadata struct{ Name string }
				Spec     struct {
					Template struct {
						Spec struct {
							SecurityContext struct {
								FSGroup *int `yaml:"fsGroup"`
							} `yaml:"securityContext"`
							Volumes []struct {
								Name   string
								Secret *struct {
									DefaultMode *int `yaml:"defaultMode"`
								}
							}
							InitContainers []container `yaml:"initContainers"`
							Containers     []container
						}
					}
				}
			}
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			pod := doc.Spec.Template.Spec
			var before [][]string
			for _, c := range pod.InitContainers {
				if args, ok := bmpproxyArgs(c); ok {
					before = append(before, args)
				}
			}
			for _, c := range pod.Containers {
				args, ok := bmpproxyArgs(c)
				if !ok {
					continue
				}
				inv := invocation{where: rel(path) + " " + doc.Kind + "/" + doc.Metadata.Name + " container " + c.Name,
					args: args, files: map[string]string{}, secrets: map[string]secretFile{}, before: before}
				for _, m := range c.VolumeMounts {
					for _, v := range pod.Volumes {
						if v.Name != m.Name || v.Secret == nil {
							continue
						}
						f := secretFile{mode: 0o644} // the API's default
						if v.Secret.DefaultMode != nil {
							f.mode = os.FileMode(*v.Secret.DefaultMode)
						}
						if g := pod.SecurityContext.FSGroup; g != nil {
							f.mode, f.gid = f.mode|0o440, *g
						}
						for _, a := range args {
							if strings.HasPrefix(a, strings.TrimSuffix(m.MountPath, "/")+"/") {
								inv.secrets[a] = f
							}
						}
					}
				}
				out = append(out, inv)
			}
		}
	}
	if len(out) < 2 {
		t.Fatalf("deploy/kubernetes: %d bmpproxy containers, want the sidecar and the DaemonSet", len(out))
	}
	return out
}

func rel(p string) string {
	r, err := filepath.Rel(deployRoot, p)
	if err != nil {
		return p
	}
	return filepath.ToSlash(r)
}

// TestDeployedArguments runs the real binary with the exact arguments of
// every shipped unit file, Dockerfile stage, compose service and
// Kubernetes container (after its Pod's bmpproxy init containers), so that a renamed or removed flag fails here and
// not for users. Only config file paths are mapped to the repository files
// the deployment puts there, and a Secret's files to stand-ins with the
// mode and group the kubelet gives them. Each runs in a network namespace of its own,
// where the fixed ports are free; it must become ready (its admin /readyz,
// asked through "bmpproxy healthcheck", the image's HEALTHCHECK) and stop
// cleanly on SIGTERM.
func TestDeployedArguments(t *testing.T) {
	var all []invocation
	all = append(all, systemdInvocations(t)...)
	all = append(all, dockerfileInvocations(t)...)
	all = append(all, composeInvocations(t)...)
	all = append(all, kubernetesInvocations(t)...)
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace per deployment (CI runs as root)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	for _, inv := range all {
		t.Run(strings.NewReplacer("/", "_", " ", "_").Replace(inv.where), func(t *testing.T) {
			args := inv.resolve(t, func(rel string) string { return filepath.Join(deployRoot, rel) })
			runInNamespace(t, inv, args)
		})
	}
}

// runInNamespace starts the binary with args in a fresh network namespace,
// waits for /readyz, runs the health check, and stops it.
func runInNamespace(t *testing.T, inv invocation, args []string) {
	t.Helper()
	var id [3]byte
	rand.Read(id[:])
	ns := "bmpx-args-" + hex.EncodeToString(id[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v\n%s", err, out)
	}
	inNS := func(args ...string) *exec.Cmd {
		// nsenter execs the binary itself: signals reach bmpproxy.
		return exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + ns, binPath()}, args...)...)
	}
	for _, b := range inv.before {
		if out, err := inNS(b...).CombinedOutput(); err != nil {
			t.Fatalf("%s: bmpproxy %s, before it: %v\n%s", inv.where, strings.Join(b, " "), err, out)
		}
	}
	logs := &lockedBuffer{}
	cmd := inNS(args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}()
	// The deployments all put the admin listener on port 9180.
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("%s: bmpproxy %s exited: %v\n%s", inv.where, strings.Join(inv.args, " "), err, logs.String())
		default:
		}
		if inNS("healthcheck", "--url", "http://127.0.0.1:9180/readyz", "--timeout", "1s").Run() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready on 127.0.0.1:9180 after 20s:\n%s", inv.where, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if inv.health != nil {
		if out, err := inNS(inv.health...).CombinedOutput(); err != nil {
			t.Errorf("%s: health check bmpproxy %s: %v\n%s", inv.where, strings.Join(inv.health, " "), err, out)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: exit after SIGTERM: %v\n%s", inv.where, err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s: still running 30s after SIGTERM", inv.where)
	}
	t.Logf("%s: bmpproxy %s: ready, healthy, stopped", inv.where, strings.Join(inv.args, " "))
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
