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
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	yamlv2 "go.yaml.in/yaml/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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
	}
	return nil, false
}

// TestKubernetesManifests decodes every manifest strictly into k8s.io/api
// types (kubeconform fetches its schemas over the network; this needs
// none), and checks what the examples promise: probes on /healthz and
// /readyz, resource requests, the Prometheus annotations, only
// NET_BIND_SERVICE for a non-root bmpproxy, and an admin token from a
// Secret for an admin listener off loopback (checkAdminToken).
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("../kubernetes/*.yaml")
	if len(files) < 2 {
		t.Fatalf("manifests: %v", files)
	}
	for _, f := range files {
		var sawProxy bool
		for i, doc := range documents(t, f) {
			obj, err := strict(doc)
			if err != nil {
				t.Errorf("%s document %d: %v", f, i+1, err)
				continue
			}
			tmpl, ok := podSpec(obj)
			if !ok {
				continue
			}
			for _, c := range tmpl.Spec.Containers {
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
					t.Errorf("%s: container %s has no cpu and memory requests", f, c.Name)
				}
				if !strings.HasPrefix(c.Image, "bmpproxy") {
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
				sc := c.SecurityContext
				if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil ||
					len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" ||
					len(sc.Capabilities.Add) != 1 || sc.Capabilities.Add[0] != "NET_BIND_SERVICE" {
					t.Errorf("%s: bmpproxy must run non-root with only NET_BIND_SERVICE: %+v", f, sc)
				}
				if err := checkAdminToken(tmpl, c); err != nil {
					t.Errorf("%s: container %s: %v", f, c.Name, err)
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
// /upgrade only with --admin-token-file (README: the admin listener). The
// file must come from a Secret volume, mounted read-only with defaultMode
// 0400; for a non-root container, the Pod's fsGroup must be its group, as
// the kubelet then makes the file root:fsGroup 0440, which bmpproxy
// accepts and that group can read.
func checkAdminToken(tmpl *corev1.PodTemplateSpec, c corev1.Container) error {
	addr := argValue(c.Args, "--admin-listen")
	if addr == "" {
		return nil
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Unmap().IsLoopback() {
		return nil
	}
	file := argValue(c.Args, "--admin-token-file")
	if file == "" {
		return fmt.Errorf("the admin listener is on %s but there is no --admin-token-file: POST /upgrade would be refused", addr)
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
	if err := checkAdminToken(good()); err != nil {
		t.Fatalf("the good example: %v", err)
	}
	loopback := corev1.Container{Args: []string{"--admin-listen", "127.0.0.1:9180"}}
	if err := checkAdminToken(&corev1.PodTemplateSpec{}, loopback); err != nil {
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
		if err := checkAdminToken(tmpl, c); err == nil {
			t.Errorf("%s: passed", name)
		}
	}
}
