package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	yamlv2 "go.yaml.in/yaml/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// TestComposeSchema loads deploy/compose/openbmp-aio.yaml as docker
// compose does: validated against the Compose Specification's JSON schema
// (bundled in compose-go, no network), interpolated, and checked for
// consistency (services, networks and volumes that it names exist).
func TestComposeSchema(t *testing.T) {
	path, _ := filepath.Abs("../compose/openbmp-aio.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path, Content: b}},
		Environment: types.Mapping{},
	}
	p, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("bmpproxy-check", true)
	})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, name := range []string{"openbmp-aio", "bmp-inner", "bmpproxy"} {
		if _, err := p.GetService(name); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
	s, _ := p.GetService("openbmp-aio")
	if len(s.Ports) != 0 {
		t.Errorf("openbmp-aio publishes %v; port 5000 must not be published", s.Ports)
	}
	if h, _ := p.GetService("bmpproxy"); h.NetworkMode != "host" {
		t.Errorf("bmpproxy network_mode %q; want host", h.NetworkMode)
	}
	// A field the schema does not know fails, so the check is not vacuous.
	bad := bytes.Replace(b, []byte("    read_only: true\n"), []byte("    read_onyl: true\n"), 1)
	details.ConfigFiles[0].Content = bad
	if _, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("bmpproxy-check", true)
	}); err == nil {
		t.Error("a misspelt field (read_onyl) passed the schema")
	}
}

// documents splits a multi-document YAML file.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yamlv2.NewDecoder(bytes.NewReader(b))
	var docs [][]byte
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if v == nil {
			continue
		}
		out, err := yamlv2.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, out)
	}
}

// strict decodes doc into the typed object for its kind, failing on any
// field that object does not have (a misspelling, a wrong nesting).
func strict(doc []byte) (any, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return nil, err
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "apps/v1 StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 Pod":
		obj = &corev1.Pod{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	default:
		return nil, errors.New("no typed check for " + meta.APIVersion + " " + meta.Kind)
	}
	return obj, yaml.UnmarshalStrict(doc, obj)
}

// podSpec returns the Pod template of a workload.
func podSpec(obj any) (*corev1.PodTemplateSpec, bool) {
	switch o := obj.(type) {
	case *appsv1.DaemonSet:
		return &o.Spec.Template, true
	case *appsv1.Deployment:
		return &o.Spec.Template, true
	case *appsv1.StatefulSet:
		return &o.Spec.Template, true
	}
	return nil, false
}

// TestKubernetesManifests decodes every manifest strictly into k8s.io/api
// types (kubeconform fetches its schemas over the network; this needs
// none), and checks what the examples promise: probes on /healthz and
// /readyz, resource requests, the Prometheus annotations, the least
// privilege for each bmpproxy container (checkPrivileges), an admin
// token from a Secret for an admin listener off loopback
// (checkAdminToken), cluster DNS on the host network (checkDNS), room
// for the resync state (checkMemory), and a --config file that comes
// from a ConfigMap of the same manifest and that bmpproxy's own loader
// accepts (checkConf).
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("../kubernetes/*.yaml")
	if len(files) < 3 {
		t.Fatalf("manifests: %v", files)
	}
	for _, f := range files {
		m := loadManifest(t, f)
		var sawProxy bool
		for _, w := range m.workloads() {
			tmpl := w.tmpl
			for _, c := range tmpl.Spec.InitContainers {
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
					t.Errorf("%s: init container %s has no cpu and memory requests", f, c.Name)
				}
				if isProxy(c) {
					if err := checkPrivileges(c, argsSettings(c)); err != nil {
						t.Errorf("%s: init container %s: %v", f, c.Name, err)
					}
				}
			}
			for _, c := range tmpl.Spec.Containers {
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
					t.Errorf("%s: container %s has no cpu and memory requests", f, c.Name)
				}
				if !isProxy(c) {
					continue
				}
				sawProxy = true
				if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
					t.Errorf("%s: bmpproxy's liveness probe is not GET /healthz", f)
				}
				if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
					t.Errorf("%s: bmpproxy's readiness probe is not GET /readyz", f)
				}
				if a := tmpl.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] == "" {
					t.Errorf("%s: no Prometheus scrape annotations: %v", f, a)
				}
				if err := checkDNS(tmpl.Spec); err != nil {
					t.Errorf("%s: %s: %v", f, w, err)
				}
				s, err := containerSettings(m, w, c)
				if err != nil {
					t.Errorf("%s: container %s: %v", f, c.Name, err)
					continue
				}
				if err := checkPrivileges(c, s); err != nil {
					t.Errorf("%s: container %s: %v", f, c.Name, err)
				}
				if err := checkAdminToken(tmpl, c, s); err != nil {
					t.Errorf("%s: container %s: %v", f, c.Name, err)
				}
				if err := checkMemory(c, s); err != nil {
					t.Errorf("%s: container %s: %v", f, c.Name, err)
				}
				if s.config != nil {
					t.Run(filepath.Base(f)+"/"+w.name+"/conf", func(t *testing.T) { checkConf(t, s) })
				}
			}
		}
		if !sawProxy {
			t.Errorf("%s: no bmpproxy container", f)
		}
	}
	// A misspelt field fails, so the check is not vacuous.
	if _, err := strict([]byte("apiVersion: apps/v1\nkind: DaemonSet\nspec:\n  template:\n    spec:\n      hostNetwrok: true\n")); err == nil {
		t.Error("a misspelt field (hostNetwrok) passed the strict decoding")
	}
}

// isProxy reports whether c runs bmpproxy.
func isProxy(c corev1.Container) bool { return strings.HasPrefix(c.Image, "bmpproxy") }

// checkPrivileges: a bmpproxy container runs with the least it needs. One
// that dials transparently (proxy_protocol transparent, in its arguments
// or its config) or sets up the return routing (transparent-setup) needs
// NET_ADMIN, which Kubernetes gives to root only, and ip from the image's
// transparent target: it runs as root with only NET_ADMIN. Any other runs
// non-root with only NET_BIND_SERVICE.
func checkPrivileges(c corev1.Container, s proxySettings) error {
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		return fmt.Errorf("bmpproxy must drop ALL capabilities: %+v", sc)
	}
	if !s.transparent {
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE"}) {
			return fmt.Errorf("bmpproxy must run non-root with only NET_BIND_SERVICE: %+v", sc)
		}
		return nil
	}
	if c.Image != "bmpproxy:transparent" {
		return fmt.Errorf("transparent dialing runs ip: image %s, want bmpproxy:transparent", c.Image)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 || !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		return fmt.Errorf("transparent dialing needs NET_ADMIN, which Kubernetes gives to root only: want runAsUser 0 with only NET_ADMIN: %+v", sc)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		return fmt.Errorf("a root bmpproxy must have a read-only root filesystem and no privilege escalation: %+v", sc)
	}
	return nil
}

// argValue returns the value of flag in args, given as "--flag value" or
// "--flag=value", or "".
func argValue(args []string, flag string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// checkAdminToken: an admin listener that is not on loopback serves POST
// /upgrade only with a token file (--admin-token-file, admin_token_file;
// README: the admin listener). The file must come from a Secret volume,
// mounted read-only with defaultMode 0400; for a non-root container, the
// Pod's fsGroup must be its group, as the kubelet then makes the file
// root:fsGroup 0440, which bmpproxy accepts and that group can read.
func checkAdminToken(tmpl *corev1.PodTemplateSpec, c corev1.Container, s proxySettings) error {
	addr := s.admin
	if addr == "" || addr == "none" {
		return nil
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Unmap().IsLoopback() {
		return nil
	}
	file := s.tokenFile
	if file == "" {
		return fmt.Errorf("the admin listener is on %s but there is no admin token file: POST /upgrade would be refused", addr)
	}
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		return fmt.Errorf("--admin-token-file %s is on no volume mount", file)
	}
	if !mount.ReadOnly {
		return fmt.Errorf("the admin token volume %s is not mounted readOnly", mount.Name)
	}
	var secret *corev1.SecretVolumeSource
	for _, v := range tmpl.Spec.Volumes {
		if v.Name == mount.Name {
			secret = v.Secret
		}
	}
	if secret == nil {
		return fmt.Errorf("the admin token volume %s is not a Secret", mount.Name)
	}
	if secret.DefaultMode == nil || *secret.DefaultMode != 0o400 {
		return fmt.Errorf("the admin token Secret %s: defaultMode %v, want 0400", secret.SecretName, secret.DefaultMode)
	}
	if sc := c.SecurityContext; sc != nil && sc.RunAsGroup != nil && *sc.RunAsGroup != 0 {
		psc := tmpl.Spec.SecurityContext
		if psc == nil || psc.FSGroup == nil || *psc.FSGroup != *sc.RunAsGroup {
			return fmt.Errorf("the Pod's fsGroup must be %d, bmpproxy's group, or it cannot read the root-owned token file", *sc.RunAsGroup)
		}
	}
	return nil
}

// TestCheckAdminToken: checkAdminToken refuses what it should, so its
// pass on the manifests is not vacuous.
func TestCheckAdminToken(t *testing.T) {
	mode, group := int32(0o400), int64(65532)
	good := func() (*corev1.PodTemplateSpec, corev1.Container) {
		tmpl := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{FSGroup: &group},
			Volumes: []corev1.Volume{{Name: "tok", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: "s", DefaultMode: &mode}}}},
		}}
		c := corev1.Container{
			Args:            []string{"--admin-listen", "[::]:9180", "--admin-token-file=/etc/t/token"},
			VolumeMounts:    []corev1.VolumeMount{{Name: "tok", MountPath: "/etc/t", ReadOnly: true}},
			SecurityContext: &corev1.SecurityContext{RunAsGroup: &group},
		}
		return tmpl, c
	}
	tmpl, c := good()
	if err := checkAdminToken(tmpl, c, argsSettings(c)); err != nil {
		t.Fatalf("the good example: %v", err)
	}
	loopback := corev1.Container{Args: []string{"--admin-listen", "127.0.0.1:9180"}}
	if err := checkAdminToken(&corev1.PodTemplateSpec{}, loopback, argsSettings(loopback)); err != nil {
		t.Errorf("a loopback admin listener without a token: %v", err)
	}
	loose := int32(0o444)
	for name, spoil := range map[string]func(*corev1.PodTemplateSpec, *corev1.Container){
		"no token file": func(_ *corev1.PodTemplateSpec, c *corev1.Container) { c.Args = c.Args[:2] },
		"not mounted":   func(_ *corev1.PodTemplateSpec, c *corev1.Container) { c.VolumeMounts = nil },
		"writable":      func(_ *corev1.PodTemplateSpec, c *corev1.Container) { c.VolumeMounts[0].ReadOnly = false },
		"not a Secret": func(p *corev1.PodTemplateSpec, _ *corev1.Container) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
		},
		"mode 0444":  func(p *corev1.PodTemplateSpec, _ *corev1.Container) { p.Spec.Volumes[0].Secret.DefaultMode = &loose },
		"no fsGroup": func(p *corev1.PodTemplateSpec, _ *corev1.Container) { p.Spec.SecurityContext = nil },
	} {
		tmpl, c := good()
		spoil(tmpl, &c)
		if err := checkAdminToken(tmpl, c, argsSettings(c)); err == nil {
			t.Errorf("%s: passed", name)
		}
	}
}

// TestCheckPrivileges: checkPrivileges refuses more privilege than each
// kind of bmpproxy container needs, and less, so that its pass on the
// manifests is not vacuous.
func TestCheckPrivileges(t *testing.T) {
	yes, no, root, user := true, false, int64(0), int64(65532)
	sc := func(nonRoot bool, uid *int64, add ...corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{RunAsNonRoot: &nonRoot, RunAsUser: uid, ReadOnlyRootFilesystem: &yes,
			AllowPrivilegeEscalation: &no, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: add}}
	}
	plain := []string{"--target", "c:5000"}
	transparent := []string{"--target", "127.0.0.1:5001", "--proxy-protocol", "transparent"}
	setup := []string{"transparent-setup", "--case", "loopback", "--apply"}
	for _, tt := range []struct {
		name  string
		c     corev1.Container
		valid bool
	}{
		{"v2, non-root", corev1.Container{Image: "bmpproxy:latest", Args: plain, SecurityContext: sc(true, &user, "NET_BIND_SERVICE")}, true},
		{"v2 with NET_ADMIN", corev1.Container{Image: "bmpproxy:latest", Args: plain, SecurityContext: sc(true, &user, "NET_ADMIN")}, false},
		{"v2 as root", corev1.Container{Image: "bmpproxy:latest", Args: plain, SecurityContext: sc(false, &root, "NET_BIND_SERVICE")}, false},
		{"transparent, root", corev1.Container{Image: "bmpproxy:transparent", Args: transparent, SecurityContext: sc(false, &root, "NET_ADMIN")}, true},
		{"setup, root", corev1.Container{Image: "bmpproxy:transparent", Args: setup, SecurityContext: sc(false, &root, "NET_ADMIN")}, true},
		{"transparent, non-root", corev1.Container{Image: "bmpproxy:transparent", Args: transparent, SecurityContext: sc(true, &user, "NET_ADMIN")}, false},
		{"transparent without NET_ADMIN", corev1.Container{Image: "bmpproxy:transparent", Args: transparent, SecurityContext: sc(false, &root, "NET_BIND_SERVICE")}, false},
		{"transparent with more", corev1.Container{Image: "bmpproxy:transparent", Args: transparent, SecurityContext: sc(false, &root, "NET_ADMIN", "SYS_ADMIN")}, false},
		{"transparent without ip", corev1.Container{Image: "bmpproxy:latest", Args: transparent, SecurityContext: sc(false, &root, "NET_ADMIN")}, false},
		{"no security context", corev1.Container{Image: "bmpproxy:latest", Args: plain}, false},
	} {
		if err := checkPrivileges(tt.c, argsSettings(tt.c)); (err == nil) != tt.valid {
			t.Errorf("%s: %v, want valid %v", tt.name, err, tt.valid)
		}
	}
}
