package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/netns"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
	"go.yaml.in/yaml/v3"
)

// invocation is how a shipped deployment file starts bmpproxy.
type invocation struct {
	where  string            // file and unit, service or container
	args   []string          // the arguments after the program
	health []string          // the health check's arguments, if the file has one
	files  map[string]string // config paths in the container → files in the repository
	// configMaps are the files that Kubernetes ConfigMap volumes of the
	// manifest provide, by their path in the container.
	configMaps map[string]configMapFile
	// secretMounts are the mount paths of Kubernetes Secret volumes, with
	// the mode and group the kubelet gives their files.
	secretMounts map[string]secretFile
	// before are the arguments of bmpproxy commands that run first, to
	// completion, in the same network namespace: a Pod's init containers.
	before [][]string
}

// configMapFile is a file of a ConfigMap volume: a key of a ConfigMap
// that the manifest defines.
type configMapFile struct {
	manifest string // the manifest, from the repository's root
	name     string // "ConfigMap/NAME key KEY", for messages
	data     string
}

// repoFile returns the file at p: a path from the repository's root, or
// an absolute one (a file the test wrote).
func repoFile(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(deployRoot, p)
}

// resolve returns inv's arguments with each config path replaced by
// config(the file the deployment puts there: a repository file, or a
// ConfigMap's data written to a temporary file), and each Secret's file
// by a stand-in with the owner and mode the kubelet gives it. In a
// ConfigMap's config, a value that names a Secret's file or another
// ConfigMap file is mapped the same way. A --config that names no file
// the deployment provides fails t.
func (inv invocation) resolve(t *testing.T, config func(path string) string) []string {
	t.Helper()
	args := append([]string(nil), inv.args...)
	for i, a := range args {
		if f, ok := inv.files[a]; ok {
			args[i] = config(f)
		} else if _, ok := inv.configMaps[a]; ok && i > 0 && (args[i-1] == "--config" || args[i-1] == "-c") {
			args[i] = config(inv.writeConfig(t, a))
		} else if p, ok := inv.provided(t, a); ok {
			args[i] = p
		} else if i > 0 && (args[i-1] == "--config" || args[i-1] == "-c") {
			t.Fatalf("%s: --config %s is not a file the deployment provides (%s)", inv.where, a, inv.providedList())
		}
	}
	return args
}

// provided writes a stand-in for the file at path in the container, if a
// Secret or a ConfigMap volume provides it, and returns its path.
func (inv invocation) provided(t *testing.T, path string) (string, bool) {
	t.Helper()
	if f, ok := inv.configMaps[path]; ok {
		p := filepath.Join(t.TempDir(), filepath.Base(path))
		if err := os.WriteFile(p, []byte(f.data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p, true
	}
	for dir, s := range inv.secretMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/") {
			return s.write(t, t.TempDir(), filepath.Base(path)), true
		}
	}
	return "", false
}

// writeConfig writes the ConfigMap file at path, a bmpproxy config, with
// every value that names a file a Secret or ConfigMap volume provides
// replaced by provided's stand-in, and returns the copy's path.
func (inv invocation) writeConfig(t *testing.T, path string) string {
	t.Helper()
	f := inv.configMaps[path]
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(f.data), &doc); err != nil {
		t.Fatalf("%s: %s %s (at %s): %v", inv.where, f.manifest, f.name, path, err)
	}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			if p, ok := inv.provided(t, n.Value); ok {
				n.Value = p
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// providedList describes the files inv's deployment provides, for an
// error.
func (inv invocation) providedList() string {
	var l []string
	for p, f := range inv.files {
		l = append(l, p+" ("+f+")")
	}
	for p, f := range inv.configMaps {
		l = append(l, p+" ("+f.name+")")
	}
	for dir := range inv.secretMounts {
		l = append(l, dir+"/* (a Secret)")
	}
	if len(l) == 0 {
		return "it provides none"
	}
	slices.Sort(l)
	return "it provides " + strings.Join(l, ", ")
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

// kubernetesInvocations reads command and args of each bmpproxy
// container, and the files its Pod's volumes provide: each key of a
// ConfigMap the same manifest defines (in the Pod's namespace), and the
// mount paths of Secrets.
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
				SubPath   string `yaml:"subPath"`
			} `yaml:"volumeMounts"`
		}
		type document struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
			Data     map[string]string // a ConfigMap's
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
							ConfigMap *struct {
								Name  string
								Items []struct{ Key, Path string }
							} `yaml:"configMap"`
						}
						InitContainers []container `yaml:"initContainers"`
						Containers     []container
					}
				}
			}
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
		var docs []document
		configMaps := map[[2]string]map[string]string{} // namespace and name → data
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc document
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if doc.Kind == "ConfigMap" {
				configMaps[[2]string{doc.Metadata.Namespace, doc.Metadata.Name}] = doc.Data
			}
			docs = append(docs, doc)
		}
		for _, doc := range docs {
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
					args: args, files: map[string]string{}, configMaps: map[string]configMapFile{},
					secretMounts: map[string]secretFile{}, before: before}
				for _, m := range c.VolumeMounts {
					for _, v := range pod.Volumes {
						if v.Name != m.Name {
							continue
						}
						if v.Secret != nil {
							f := secretFile{mode: 0o644} // the API's default
							if v.Secret.DefaultMode != nil {
								f.mode = os.FileMode(*v.Secret.DefaultMode)
							}
							if g := pod.SecurityContext.FSGroup; g != nil {
								f.mode, f.gid = f.mode|0o440, *g
							}
							inv.secretMounts[m.MountPath] = f
						}
						if cm := v.ConfigMap; cm != nil {
							data, ok := configMaps[[2]string{doc.Metadata.Namespace, cm.Name}]
							if !ok {
								continue // not in this manifest: it provides nothing the test knows
							}
							for p, f := range configMapVolume(rel(path), cm.Name, data, cm.Items) {
								if dst, ok := subPathMount(m.MountPath, m.SubPath, p); ok {
									inv.configMaps[dst] = f
								}
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

// configMapVolume returns the files of a volume of ConfigMap name, from
// manifest, with data, by their path in the volume: each key, or with
// items only the keys they list, each at its item's path.
func configMapVolume(manifest, name string, data map[string]string, items []struct{ Key, Path string }) map[string]configMapFile {
	file := func(key string) configMapFile {
		return configMapFile{manifest: manifest, name: "ConfigMap/" + name + " key " + key, data: data[key]}
	}
	out := map[string]configMapFile{}
	if len(items) == 0 {
		for k := range data {
			out[k] = file(k)
		}
		return out
	}
	for _, it := range items {
		if _, ok := data[it.Key]; ok {
			out[it.Path] = file(it.Key)
		}
	}
	return out
}

// subPathMount returns where the volume's file p appears in a container
// that mounts the volume at mountPath: the whole volume, or with subPath
// only that file or directory of it.
func subPathMount(mountPath, subPath, p string) (string, bool) {
	mountPath = strings.TrimSuffix(mountPath, "/")
	switch sub := strings.Trim(subPath, "/"); {
	case sub == "":
		return mountPath + "/" + p, true
	case p == sub:
		return mountPath, true
	case strings.HasPrefix(p, sub+"/"):
		return mountPath + "/" + strings.TrimPrefix(p, sub+"/"), true
	}
	return "", false
}

// TestConfigMapMounts: a ConfigMap volume provides each key under its
// mountPath, or with items each listed key at its path, and a subPath
// mount only that file or directory of the volume, at mountPath.
func TestConfigMapMounts(t *testing.T) {
	data := map[string]string{"bmpproxy.yaml": "a", "extra.yaml": "b"}
	type items = []struct{ Key, Path string }
	for _, tt := range []struct {
		name               string
		items              items
		mountPath, subPath string
		want               map[string]string // path in the container → data
	}{
		{"every key", nil, "/etc/bmpproxy/", "", map[string]string{"/etc/bmpproxy/bmpproxy.yaml": "a", "/etc/bmpproxy/extra.yaml": "b"}},
		{"items", items{{"bmpproxy.yaml", "conf/main.yaml"}}, "/etc/bmpproxy", "", map[string]string{"/etc/bmpproxy/conf/main.yaml": "a"}},
		{"an item of a missing key", items{{"other.yaml", "other.yaml"}}, "/etc/bmpproxy", "", map[string]string{}},
		{"a file's subPath", nil, "/etc/bmpproxy/bmpproxy.yaml", "bmpproxy.yaml", map[string]string{"/etc/bmpproxy/bmpproxy.yaml": "a"}},
		{"a directory's subPath", items{{"bmpproxy.yaml", "conf/main.yaml"}, {"extra.yaml", "extra.yaml"}}, "/etc/bmpproxy", "conf",
			map[string]string{"/etc/bmpproxy/main.yaml": "a"}},
	} {
		got := map[string]string{}
		for p, f := range configMapVolume("deploy/kubernetes/x.yaml", "bmpproxy", data, tt.items) {
			if dst, ok := subPathMount(tt.mountPath, tt.subPath, p); ok {
				got[dst] = f.data
			}
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("%s: %v; want %v", tt.name, got, tt.want)
		}
	}
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
// Kubernetes container (after its Pod's bmpproxy init containers), so
// that a renamed or removed flag fails here and not for users. Only
// config file paths are mapped, to the repository files the deployment
// puts there or to a ConfigMap's data from the manifest, and a Secret's
// files (named in the arguments or in a ConfigMap's config) to stand-ins
// with the mode and group the kubelet gives them. Each runs in a network
// namespace of its own, where the fixed ports are free and no name
// resolves; it must become ready (its admin /readyz, asked through
// "bmpproxy healthcheck", the image's HEALTHCHECK) and stop cleanly on
// SIGTERM. A pool whose target is a name must not keep it from that: it
// warns that the name does not resolve, and with resync a router's
// session, with no member to go to, is kept (checkUnresolvedPools).
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
			args := inv.resolve(t, repoFile)
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
	checkUnresolvedPools(t, inv, ns, loadArgs(t, args), logs)
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

// checkUnresolvedPools checks, for each pool of cfg with a name target
// (a Service's, which resolves nowhere in the namespace: it has only its
// loopback), that bmpproxy, ready, warns that the name does not resolve,
// and, with resync, keeps a router's session that has no member to go to,
// its leg waiting to connect.
func checkUnresolvedPools(t *testing.T, inv invocation, ns string, cfg *conf.Config, logs *lockedBuffer) {
	t.Helper()
	var last string // the last GET /routers, or why it failed
	defer func() {
		if t.Failed() {
			t.Logf("%s: the last GET /routers: %s\nbmpproxy's log:\n%s", inv.where, last, logs.String())
		}
	}()
	for _, l := range cfg.Listeners {
		if l.Pool == nil {
			continue
		}
		var names []string
		for _, tg := range l.Pool.Targets {
			if _, err := netip.ParseAddr(tg.Host); err != nil {
				names = append(names, tg.String())
			}
		}
		if len(names) == 0 {
			continue
		}
		// A lookup that hangs ends at the resolve interval, its bound.
		wait := l.Pool.ResolveInterval + binaryWait
		for _, name := range names {
			waitfor.Within(t, wait, fmt.Sprintf("%s: a warning that pool target %s of listener %q does not resolve", inv.where, name, l.Name), func() bool {
				for _, line := range strings.Split(logs.String(), "\n") {
					var m map[string]any
					if json.Unmarshal([]byte(line), &m) == nil && m["level"] == "warn" &&
						m["message"] == "pool target does not resolve; its members are kept" &&
						m["listener"] == l.Name && m["target"] == name {
						return true
					}
				}
				return false
			})
		}
		if !l.BMP || !l.Resync || len(l.Listen) == 0 {
			continue
		}
		a := l.Listen[0]
		host := a.Addr().String()
		if a.Addr().IsUnspecified() {
			host = "::1"
			if a.Addr().Is4() {
				host = "127.0.0.1"
			}
		}
		sysName := "deployed-arguments-" + l.Name
		var conn net.Conn
		var err error
		netns.Do(t, ns, func() { conn, err = net.DialTimeout("tcp", net.JoinHostPort(host, fmt.Sprint(a.Port())), binaryWait) })
		if err != nil {
			t.Fatalf("%s: a router cannot connect to listener %q: %v", inv.where, l.Name, err)
		}
		defer conn.Close()
		if _, err := conn.Write(bmp.EncodeInitiation("bmpproxy deployed arguments test", sysName)); err != nil {
			t.Fatal(err)
		}
		// GET /routers over a connection made in the namespace.
		routers := func() ([]byte, error) {
			var c net.Conn
			var err error
			netns.Do(t, ns, func() { c, err = net.DialTimeout("tcp", "127.0.0.1:9180", 5*time.Second) })
			if err != nil {
				return nil, err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9180/routers", nil)
			req.Close = true
			if err := req.Write(c); err != nil {
				return nil, err
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), req)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			return io.ReadAll(resp.Body)
		}
		waitfor.Within(t, binaryWait, fmt.Sprintf("%s: /routers to show router %s kept on listener %q, its leg waiting for a pool member", inv.where, sysName, l.Name), func() bool {
			b, err := routers()
			if err != nil {
				last = err.Error()
				return false
			}
			last = string(b)
			var rr struct {
				Routers []struct {
					SysName string `json:"sys_name"`
					State   string `json:"state"`
					Legs    []struct {
						State     string `json:"state"`
						LastError string `json:"last_error"`
					} `json:"legs"`
				} `json:"routers"`
			}
			if json.Unmarshal(b, &rr) != nil {
				return false
			}
			for _, r := range rr.Routers {
				if r.SysName == sysName && r.State == "connected" && len(r.Legs) == 1 &&
					r.Legs[0].State == "connecting" && strings.Contains(r.Legs[0].LastError, "no eligible member") {
					return true
				}
			}
			return false
		})
		t.Logf("%s: pool targets %s of listener %q do not resolve: warned, and router %s kept, waiting for a member", inv.where, strings.Join(names, ", "), l.Name, sysName)
	}
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
