package check

import (
	"bytes"
	"context"
	"errors"
	"io"
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
// /readyz, resource requests, the Prometheus annotations, and only
// NET_BIND_SERVICE for a non-root bmpproxy.
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
