package check

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/conf"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const poolManifest = "../kubernetes/pool.yaml"

// TestPoolManifest checks deploy/kubernetes/pool.yaml beyond what every
// manifest gets: its pool (checkPool), one namespace, its own, for every
// object, and the collector image of daemonset.yaml, which reads v2 for
// both families.
func TestPoolManifest(t *testing.T) {
	m := loadManifest(t, poolManifest)
	if err := checkPool(m); err != nil {
		t.Error(err)
	}
	nss := objectsOf[*corev1.Namespace](m)
	if len(nss) != 1 {
		t.Fatalf("%s: %d Namespaces, want the one its objects are in", m.path, len(nss))
	}
	for _, o := range m.objs {
		if _, ok := o.(*corev1.Namespace); ok {
			continue
		}
		if ns := namespaceOf(o); ns != nss[0].Name {
			t.Errorf("%s: %T %s is in namespace %q, want %q", m.path, o, nameOf(o), ns, nss[0].Name)
		}
	}
	images := func(m manifest) []string {
		var out []string
		for _, w := range m.workloads() {
			for _, c := range w.tmpl.Spec.Containers {
				if !isProxy(c) {
					out = append(out, c.Image)
				}
			}
		}
		return out
	}
	ds := loadManifest(t, "../kubernetes/daemonset.yaml")
	for _, img := range images(m) {
		if !slices.Contains(images(ds), img) {
			t.Errorf("%s: collector image %s; daemonset.yaml's, which reads v2 for IPv6 routers too, is %v", m.path, img, images(ds))
		}
	}
}

// checkPool: every pool target of a bmpproxy in m is the cluster DNS name
// of a headless Service of m that publishes ready Pods only, on a port
// that is the collectors' own (a headless name resolves to the Pods, and
// no port is mapped); the Service selects one StatefulSet, whose
// serviceName it is, and whose collector is ready only when that port
// answers; a bmpproxy on the host network resolves the name
// (checkDNS); and a pmacct collector reads the header the pool sends
// on that port.
func checkPool(m manifest) error {
	var errs []error
	targets := 0
	for _, w := range m.workloads() {
		for _, c := range w.tmpl.Spec.Containers {
			if !isProxy(c) {
				continue
			}
			s, err := containerSettings(m, w, c)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s container %s: %w", w, c.Name, err))
				continue
			}
			if len(s.pools) > 0 {
				if err := checkDNS(w.tmpl.Spec); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", w, err))
				}
			}
			for _, p := range s.pools {
				for _, tg := range p.targets {
					targets++
					if err := checkPoolTarget(m, p, tg); err != nil {
						errs = append(errs, fmt.Errorf("%s container %s, listener %s, pool target %s: %w", w, c.Name, p.listener, tg, err))
					}
				}
			}
		}
	}
	if targets == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no bmpproxy with a pool"))
	}
	return errors.Join(errs...)
}

func checkPoolTarget(m manifest, p poolSettings, target string) error {
	tg, err := conf.ParseTarget(target)
	if err != nil {
		return err
	}
	host := strings.ToLower(strings.TrimSuffix(tg.Host, "."))
	var svc *corev1.Service
	var names []string
	for _, s := range objectsOf[*corev1.Service](m) {
		short := s.Name + "." + s.Namespace + ".svc"
		names = append(names, short+".cluster.local")
		if s.Namespace != "" && (host == short || host == short+".cluster.local") {
			svc = s
		}
	}
	if svc == nil {
		return fmt.Errorf("%s is not NAME.NAMESPACE.svc.cluster.local of a Service of this file in a namespace of its own (%v)", tg.Host, names)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		return fmt.Errorf("Service %s is not headless (clusterIP: None): its name resolves to one virtual address, a pool of one member", svc.Name)
	}
	if svc.Spec.PublishNotReadyAddresses {
		return fmt.Errorf("Service %s publishes Pods that are not ready: bmpproxy would send routers to collectors that cannot take them", svc.Name)
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == int32(tg.Port) })
	if i < 0 {
		return fmt.Errorf("Service %s has no port %d", svc.Name, tg.Port)
	}
	sp := svc.Spec.Ports[i]
	if len(svc.Spec.Selector) == 0 {
		return fmt.Errorf("Service %s has no selector: no Pod is a member", svc.Name)
	}
	var selected []workload
	for _, w := range m.workloads() {
		if w.namespace == svc.Namespace && selects(svc.Spec.Selector, w.tmpl.Labels) {
			selected = append(selected, w)
		}
	}
	if len(selected) != 1 || selected[0].kind != "StatefulSet" {
		return fmt.Errorf("Service %s selects %v; want the collectors' StatefulSet alone", svc.Name, selected)
	}
	w := selected[0]
	sts := objectsOf[*appsv1.StatefulSet](m)[slices.IndexFunc(objectsOf[*appsv1.StatefulSet](m), func(s *appsv1.StatefulSet) bool {
		return s.Namespace == w.namespace && s.Name == w.name
	})]
	if sts.Spec.ServiceName != svc.Name {
		return fmt.Errorf("StatefulSet %s: serviceName %q, want the headless Service %s", sts.Name, sts.Spec.ServiceName, svc.Name)
	}
	if sts.Spec.Selector == nil || !selects(sts.Spec.Selector.MatchLabels, w.tmpl.Labels) {
		return fmt.Errorf("StatefulSet %s: its selector does not select its own Pods", sts.Name)
	}
	c, cp, err := targetPort(w.tmpl, sp)
	if err != nil {
		return fmt.Errorf("Service %s port %d: %w", svc.Name, sp.Port, err)
	}
	if cp.ContainerPort != sp.Port {
		return fmt.Errorf("Service %s port %d goes to container port %d: a headless Service maps no port, and bmpproxy dials the Pods on %d",
			svc.Name, sp.Port, cp.ContainerPort, sp.Port)
	}
	if pr := c.ReadinessProbe; pr == nil || pr.TCPSocket == nil || !samePort(pr.TCPSocket.Port, cp) {
		return fmt.Errorf("container %s: no readiness probe (tcpSocket) on its port %d: a collector that does not listen stays a member", c.Name, cp.ContainerPort)
	}
	if strings.Contains(c.Image, "pmacct") {
		return checkPmacct(m, w, c, cp.ContainerPort, p.proxyProtocol)
	}
	return nil
}

// selects reports whether selector, a set of labels, selects labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if l, ok := labels[k]; !ok || l != v {
			return false
		}
	}
	return true
}

// targetPort returns the container and port of tmpl that sp goes to.
func targetPort(tmpl *corev1.PodTemplateSpec, sp corev1.ServicePort) (corev1.Container, corev1.ContainerPort, error) {
	tp := sp.TargetPort
	if tp.Type == intstr.Int && tp.IntVal == 0 {
		tp = intstr.FromInt32(sp.Port)
	}
	for _, c := range tmpl.Spec.Containers {
		for _, cp := range c.Ports {
			if samePort(tp, cp) {
				return c, cp, nil
			}
		}
	}
	return corev1.Container{}, corev1.ContainerPort{}, fmt.Errorf("targetPort %s is no port of the selected Pods", tp.String())
}

// samePort reports whether p, a number or a name, is cp.
func samePort(p intstr.IntOrString, cp corev1.ContainerPort) bool {
	if p.Type == intstr.String {
		return p.StrVal == cp.Name
	}
	return p.IntVal == cp.ContainerPort
}

// checkPmacct: pmbmpd, started with -f FILE from a ConfigMap, listens on
// port and reads a PROXY header exactly when the pool sends one.
func checkPmacct(m manifest, w workload, c corev1.Container, port int32, header conf.ProxyProtocol) error {
	file := argValue(slices.Concat(c.Command, c.Args), "-f")
	if file == "" {
		return fmt.Errorf("container %s: pmacct without -f FILE", c.Name)
	}
	data, err := mountedFile(m, w, c, file)
	if err != nil {
		return fmt.Errorf("container %s: -f: %w", c.Name, err)
	}
	kv := pmacctConf(data)
	if kv["bmp_daemon_port"] != strconv.Itoa(int(port)) {
		return fmt.Errorf("%s: bmp_daemon_port %q; the Service and the pool dial %d", file, kv["bmp_daemon_port"], port)
	}
	reads := kv["bmp_daemon_parse_proxy_header"] == "true"
	sends := header == conf.ProxyV1 || header == conf.ProxyV2
	if reads != sends {
		return fmt.Errorf("%s: bmp_daemon_parse_proxy_header %q, but the pool sends proxy_protocol %s", file, kv["bmp_daemon_parse_proxy_header"], header)
	}
	return nil
}

// pmacctConf returns the "key: value" lines of a pmacct config; "!"
// starts a comment.
func pmacctConf(data []byte) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "!")
		if k, v, ok := strings.Cut(line, ":"); ok {
			kv[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return kv
}

func namespaceOf(o any) string {
	return o.(interface{ GetNamespace() string }).GetNamespace()
}

func nameOf(o any) string {
	return o.(interface{ GetName() string }).GetName()
}

// TestCheckPool: checkPool refuses each mistake it is for, made in
// pool.yaml, so that its pass there is not vacuous.
func TestCheckPool(t *testing.T) {
	service := func(m manifest) *corev1.Service { return objectsOf[*corev1.Service](m)[0] }
	sts := func(m manifest) *appsv1.StatefulSet { return objectsOf[*appsv1.StatefulSet](m)[0] }
	ds := func(m manifest) *appsv1.DaemonSet { return objectsOf[*appsv1.DaemonSet](m)[0] }
	collector := func(m manifest) *corev1.Container { return &sts(m).Spec.Template.Spec.Containers[0] }
	// edit replaces old by new in the data of the ConfigMap that has key.
	edit := func(key, old, new string) func(manifest) {
		return func(m manifest) {
			for _, cm := range objectsOf[*corev1.ConfigMap](m) {
				if d, ok := cm.Data[key]; ok {
					if !strings.Contains(d, old) {
						t.Fatalf("%s: no %q", key, old)
					}
					cm.Data[key] = strings.Replace(d, old, new, 1)
				}
			}
		}
	}
	if err := checkPool(loadManifest(t, poolManifest)); err != nil {
		t.Fatalf("pool.yaml: %v", err)
	}
	for name, spoil := range map[string]func(manifest){
		"a ClusterIP Service":          func(m manifest) { service(m).Spec.ClusterIP = "" },
		"not-ready Pods published":     func(m manifest) { service(m).Spec.PublishNotReadyAddresses = true },
		"no selector":                  func(m manifest) { service(m).Spec.Selector = nil },
		"a selector that selects none": func(m manifest) { service(m).Spec.Selector = map[string]string{"app.kubernetes.io/name": "x"} },
		"bmpproxy selected too": func(m manifest) {
			maps.Copy(ds(m).Spec.Template.Labels, sts(m).Spec.Template.Labels)
		},
		"serviceName":             func(m manifest) { sts(m).Spec.ServiceName = "collector" },
		"a port mapped":           func(m manifest) { collector(m).Ports[0].ContainerPort = 5001 },
		"no such Service port":    func(m manifest) { service(m).Spec.Ports[0].Port = 5001 },
		"no readiness probe":      func(m manifest) { collector(m).ReadinessProbe = nil },
		"readiness on HTTP":       func(m manifest) { collector(m).ReadinessProbe.TCPSocket = nil },
		"readiness elsewhere":     func(m manifest) { collector(m).ReadinessProbe.TCPSocket.Port = intstr.FromInt32(9999) },
		"a short target name":     edit("bmpproxy.yaml", "collectors.bmp.svc.cluster.local:", "collectors:"),
		"another namespace":       edit("bmpproxy.yaml", "collectors.bmp.svc.cluster.local:", "collectors.default.svc.cluster.local:"),
		"another port":            edit("bmpproxy.yaml", "cluster.local:5000", "cluster.local:5001"),
		"no cluster DNS":          func(m manifest) { ds(m).Spec.Template.Spec.DNSPolicy = "" },
		"pmacct reads no header":  edit("pmbmpd.conf", "bmp_daemon_parse_proxy_header: true", "bmp_daemon_parse_proxy_header: false"),
		"pmacct on another port":  edit("pmbmpd.conf", "bmp_daemon_port: 5000", "bmp_daemon_port: 5001"),
		"no header, pmacct reads": edit("bmpproxy.yaml", "proxy_protocol: v2", "proxy_protocol: none"),
		"the config elsewhere":    func(m manifest) { ds(m).Spec.Template.Spec.Volumes[0].ConfigMap.Name = "other" },
		"the config's key":        func(m manifest) { ds(m).Spec.Template.Spec.Containers[0].Args[1] = "/etc/bmpproxy/other.yaml" },
		"no pool":                 edit("bmpproxy.yaml", "pool:", "poool:"),
	} {
		m := loadManifest(t, poolManifest)
		spoil(m)
		if err := checkPool(m); err == nil {
			t.Errorf("%s: passed", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
