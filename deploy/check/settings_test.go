package check

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/conf"
	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// manifest is one file's documents, each decoded strictly (see strict),
// in the file's order.
type manifest struct {
	path string
	objs []any
}

// loadManifest decodes every document of the file at path; a document
// that does not decode fails t and is left out.
func loadManifest(t *testing.T, path string) manifest {
	t.Helper()
	m := manifest{path: path}
	for i, doc := range documents(t, path) {
		obj, err := strict(doc)
		if err != nil {
			t.Errorf("%s document %d: %v", path, i+1, err)
			continue
		}
		m.objs = append(m.objs, obj)
	}
	return m
}

// objectsOf returns the objects of m of type T, in the file's order.
func objectsOf[T any](m manifest) []T {
	var out []T
	for _, o := range m.objs {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// workload is an object of a manifest that has a Pod template.
type workload struct {
	kind, namespace, name string
	tmpl                  *corev1.PodTemplateSpec
}

func (w workload) String() string { return w.kind + "/" + w.name }

func (m manifest) workloads() []workload {
	var out []workload
	for _, o := range m.objs {
		tmpl, ok := podSpec(o)
		if !ok {
			continue
		}
		meta := o.(metav1.Object)
		kind := strings.TrimPrefix(fmt.Sprintf("%T", o), "*v1.")
		out = append(out, workload{kind: kind, namespace: meta.GetNamespace(), name: meta.GetName(), tmpl: tmpl})
	}
	return out
}

// configMap returns m's ConfigMap name in namespace ns, or nil.
func (m manifest) configMap(ns, name string) *corev1.ConfigMap {
	for _, cm := range objectsOf[*corev1.ConfigMap](m) {
		if cm.Namespace == ns && cm.Name == name {
			return cm
		}
	}
	return nil
}

// mountedFile returns the file at p in container c of w, which must be on
// a ConfigMap volume (mounted whole, with items, or one key by subPath)
// whose ConfigMap is in m, in w's namespace.
func mountedFile(m manifest, w workload, c corev1.Container, p string) ([]byte, error) {
	var mount *corev1.VolumeMount
	var key string
	for i, vm := range c.VolumeMounts {
		if vm.SubPath != "" {
			if vm.MountPath == p {
				mount, key = &c.VolumeMounts[i], vm.SubPath
			}
			continue
		}
		if k, ok := strings.CutPrefix(p, strings.TrimSuffix(vm.MountPath, "/")+"/"); ok && (mount == nil || len(vm.MountPath) > len(mount.MountPath)) {
			mount, key = &c.VolumeMounts[i], k
		}
	}
	if mount == nil {
		return nil, fmt.Errorf("%s is on no volume mount of container %s", p, c.Name)
	}
	var cmv *corev1.ConfigMapVolumeSource
	for _, v := range w.tmpl.Spec.Volumes {
		if v.Name == mount.Name {
			cmv = v.ConfigMap
		}
	}
	if cmv == nil {
		return nil, fmt.Errorf("%s is on volume %s, which is not a ConfigMap", p, mount.Name)
	}
	if len(cmv.Items) > 0 {
		i := slices.IndexFunc(cmv.Items, func(it corev1.KeyToPath) bool { return it.Path == key })
		if i < 0 {
			return nil, fmt.Errorf("%s: the items of volume %s have no path %s", p, mount.Name, key)
		}
		key = cmv.Items[i].Key
	}
	cm := m.configMap(w.namespace, cmv.Name)
	if cm == nil {
		return nil, fmt.Errorf("%s is on ConfigMap %s, which is not in this file (namespace %q)", p, cmv.Name, w.namespace)
	}
	data, ok := cm.Data[key]
	if !ok {
		return nil, fmt.Errorf("%s: ConfigMap %s has no key %q", p, cm.Name, key)
	}
	return []byte(data), nil
}

// proxySettings is what the checks read of a bmpproxy container: its
// arguments, or the config file that --config names.
type proxySettings struct {
	configPath string // --config's value, or ""
	config     []byte // that file, from its ConfigMap; nil without --config
	admin      string // the admin listener's address, "" or "none" for none
	tokenFile  string
	// transparent: a listener dials transparently, or the container sets up
	// the return routing.
	transparent  bool
	resync       bool   // a listener keeps its routers' state
	resyncMemory string // the bound on that state; "" is the default
	pools        []poolSettings
}

// poolSettings is a listener's pool: of collectors.
type poolSettings struct {
	listener      string
	targets       []string
	proxyProtocol conf.ProxyProtocol // the header sent to each member
}

// argsSettings returns what c's command line says, ignoring --config.
func argsSettings(c corev1.Container) proxySettings {
	args := slices.Concat(c.Command, c.Args)
	return proxySettings{
		configPath:   cmpOr(argValue(args, "--config"), argValue(args, "-c")),
		admin:        argValue(args, "--admin-listen"),
		tokenFile:    argValue(args, "--admin-token-file"),
		transparent:  argValue(args, "--proxy-protocol") == "transparent" || slices.Contains(args, "transparent-setup"),
		resync:       slices.Contains(args, "--resync") || slices.Contains(args, "--resync=true"),
		resyncMemory: argValue(args, "--resync-memory"),
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// containerSettings returns c's settings: its arguments', and with
// --config the file's, which must be mounted from a ConfigMap of m. Only
// the token file may be given on both (README: Environment and --config);
// the argument wins.
func containerSettings(m manifest, w workload, c corev1.Container) (proxySettings, error) {
	s := argsSettings(c)
	if s.configPath == "" {
		return s, nil
	}
	data, err := mountedFile(m, w, c, s.configPath)
	if err != nil {
		return s, fmt.Errorf("--config: %w", err)
	}
	s.config = data
	var f struct {
		Admin            string `yaml:"admin"`
		AdminTokenFile   string `yaml:"admin_token_file"`
		TransparentSetup string `yaml:"transparent_setup"`
		ResyncMemory     string `yaml:"resync_memory"`
		Listeners        []struct {
			Name          string             `yaml:"name"`
			ProxyProtocol conf.ProxyProtocol `yaml:"proxy_protocol"`
			Resync        bool               `yaml:"resync"`
			Pool          *struct {
				Targets       []string           `yaml:"targets"`
				ProxyProtocol conf.ProxyProtocol `yaml:"proxy_protocol"`
			} `yaml:"pool"`
		} `yaml:"listeners"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return s, fmt.Errorf("--config %s: %w", s.configPath, err)
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return s, fmt.Errorf("--config %s: %w", s.configPath, err)
	}
	s.admin, s.tokenFile = f.Admin, cmpOr(s.tokenFile, f.AdminTokenFile)
	s.transparent = s.transparent || f.TransparentSetup != "" || hasTransparent(doc)
	s.resyncMemory = f.ResyncMemory
	for _, l := range f.Listeners {
		s.resync = s.resync || l.Resync
		if l.Pool == nil {
			continue
		}
		pp := cmpOr(string(l.Pool.ProxyProtocol), cmpOr(string(l.ProxyProtocol), string(conf.ProxyV2)))
		s.pools = append(s.pools, poolSettings{listener: l.Name, targets: l.Pool.Targets, proxyProtocol: conf.ProxyProtocol(pp)})
	}
	return s, nil
}

// hasTransparent reports whether any proxy_protocol in a decoded config,
// at any depth (a listener's, a target's, a pool's), is transparent.
func hasTransparent(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if k == "proxy_protocol" && e == string(conf.ProxyTransparent) || hasTransparent(e) {
				return true
			}
		}
	case []any:
		return slices.ContainsFunc(v, hasTransparent)
	}
	return false
}

// checkDNS: a Pod on the host network resolves cluster names (a target's
// Service, a pool's headless Service) only with dnsPolicy
// ClusterFirstWithHostNet; with the default, ClusterFirst, it falls back
// to the node's resolver and every Service name fails.
func checkDNS(spec corev1.PodSpec) error {
	if spec.HostNetwork && spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		return fmt.Errorf("hostNetwork with dnsPolicy %q: Service names do not resolve; want %s",
			cmpOr(string(spec.DNSPolicy), "unset, ClusterFirst"), corev1.DNSClusterFirstWithHostNet)
	}
	return nil
}

// checkMemory: with resync, the container's memory limit leaves room for
// the resync state's bound: at least 4 times it, as Go's heap grows to
// about twice the live state and an upgrade holds it in two processes
// (README: the memory bound, reload and upgrade). The default bound,
// 1GiB, is more than a small limit.
func checkMemory(c corev1.Container, s proxySettings) error {
	limit := c.Resources.Limits.Memory()
	if !s.resync || limit.IsZero() {
		return nil
	}
	rm := s.resyncMemory
	if rm == "" {
		rm = conf.DefaultResyncMemory.String() + " (unset, the default)"
	}
	b, err := conf.ParseByteSize(cmpOr(s.resyncMemory, conf.DefaultResyncMemory.String()))
	if err != nil {
		return fmt.Errorf("resync_memory: %w", err)
	}
	if 4*int64(b) > limit.Value() {
		return fmt.Errorf("resync_memory %s and memory limit %s: the limit must be at least 4 times the bound, or the container is killed before the bound applies",
			rm, limit)
	}
	return nil
}

// checkConf parses the container's config file with bmpproxy's own loader
// and checks that the settings the other checks read from it are the
// ones bmpproxy reads.
func checkConf(t *testing.T, s proxySettings) {
	cfg, err := conf.Parse(s.config)
	if err != nil {
		t.Fatalf("--config %s: %v", s.configPath, err)
	}
	var admin netip.AddrPort
	if s.admin != "" && s.admin != "none" {
		if admin, err = conf.ParseListen(s.admin); err != nil {
			t.Fatalf("--config %s: admin: %v", s.configPath, err)
		}
	}
	if cfg.Admin != admin {
		t.Errorf("--config %s: bmpproxy's admin listener is %s; the checks read %q", s.configPath, cfg.Admin, s.admin)
	}
	var pools []poolSettings
	for _, l := range cfg.Listeners {
		if l.Pool == nil {
			continue
		}
		p := poolSettings{proxyProtocol: conf.ProxyProtocol(cmpOr(string(l.Pool.ProxyProtocol), string(l.ProxyProtocol)))}
		for _, tg := range l.Pool.Targets {
			p.targets = append(p.targets, tg.String())
		}
		pools = append(pools, p)
	}
	read := slices.Clone(s.pools)
	for i := range read {
		read[i].targets = slices.Clone(read[i].targets)
		for j, tg := range read[i].targets {
			if p, err := conf.ParseTarget(tg); err == nil {
				read[i].targets[j] = p.String()
			}
		}
	}
	if !slices.EqualFunc(pools, read, func(a, b poolSettings) bool {
		return a.proxyProtocol == b.proxyProtocol && slices.Equal(a.targets, b.targets)
	}) {
		t.Errorf("--config %s: bmpproxy's pools are %+v; the checks read %+v", s.configPath, pools, read)
	}
}

// TestCheckDNS: checkDNS refuses the host network without cluster DNS.
func TestCheckDNS(t *testing.T) {
	for _, tt := range []struct {
		spec  corev1.PodSpec
		valid bool
	}{
		{corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet}, true},
		{corev1.PodSpec{HostNetwork: true}, false},
		{corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirst}, false},
		{corev1.PodSpec{HostNetwork: true, DNSPolicy: corev1.DNSDefault}, false},
		{corev1.PodSpec{}, true},
	} {
		if err := checkDNS(tt.spec); (err == nil) != tt.valid {
			t.Errorf("hostNetwork %v, dnsPolicy %q: %v, want valid %v", tt.spec.HostNetwork, tt.spec.DNSPolicy, err, tt.valid)
		}
	}
}

// TestCheckMemory: checkMemory refuses a limit the resync state can pass.
func TestCheckMemory(t *testing.T) {
	limited := func(limit string) corev1.Container {
		var c corev1.Container
		c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(limit)}
		return c
	}
	for _, tt := range []struct {
		limit string
		s     proxySettings
		valid bool
	}{
		{"640Mi", proxySettings{resync: true, resyncMemory: "128MiB"}, true},
		{"256Mi", proxySettings{resync: true, resyncMemory: "128MiB"}, false},
		{"256Mi", proxySettings{resync: true}, false}, // the default, 1GiB
		{"256Mi", proxySettings{}, true},              // no resync
		{"8Gi", proxySettings{resync: true}, true},
	} {
		if err := checkMemory(limited(tt.limit), tt.s); (err == nil) != tt.valid {
			t.Errorf("limit %s, %+v: %v, want valid %v", tt.limit, tt.s, err, tt.valid)
		}
	}
}
