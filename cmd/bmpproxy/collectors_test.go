package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/netns"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// declaration is what a shipped file says about the collector its
// bmpproxy serves, on a line of its own:
//
//	# collector: KIND
//	# collector: KIND, through PATH
//	# collector: KIND, behind PATH [PATH...]
//
// KIND is a testtarget.Kind. "through PATH": the file's BMP listeners feed
// a second bmpproxy next to the collector, configured by PATH (two hops).
// "behind PATH...": the file configures that second bmpproxy, fed by the
// bmpproxy of each PATH, and runs in their chains only. Paths are from the
// repository's root.
type declaration struct {
	kind    testtarget.Kind
	through string
	behind  []string
}

const declarationPrefix = "# collector:"

// readDeclaration returns the declaration of the shipped file rel.
func readDeclaration(rel string) (declaration, error) {
	b, err := os.ReadFile(filepath.Join(deployRoot, rel))
	if err != nil {
		return declaration{}, err
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), declarationPrefix); ok {
			lines = append(lines, strings.TrimSpace(v))
		}
	}
	if len(lines) != 1 {
		var kinds []string
		for _, k := range testtarget.Kinds() {
			kinds = append(kinds, string(k))
		}
		return declaration{}, fmt.Errorf("%s: %d %q lines, want one naming the collector it is for (%s), so that TestShippedCollectors runs it against that collector",
			rel, len(lines), declarationPrefix, strings.Join(kinds, ", "))
	}
	parts := strings.Split(lines[0], ",")
	kind, err := testtarget.ParseKind(strings.TrimSpace(parts[0]))
	if err != nil {
		return declaration{}, fmt.Errorf("%s: %w", rel, err)
	}
	d := declaration{kind: kind}
	for _, p := range parts[1:] {
		f := strings.Fields(p)
		switch {
		case len(f) == 2 && f[0] == "through":
			d.through = f[1]
		case len(f) >= 2 && f[0] == "behind":
			d.behind = f[1:]
		default:
			return declaration{}, fmt.Errorf("%s: %q in %q: want \"through PATH\" or \"behind PATH...\"", rel, p, lines[0])
		}
	}
	return d, nil
}

// shippedFiles returns every file under examples/ and deploy/, from the
// repository's root, but deploy/check, the module that checks them
// offline.
func shippedFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"examples", "deploy"} {
		err := filepath.WalkDir(filepath.Join(deployRoot, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && rel(p) == "deploy/check" {
				return filepath.SkipDir
			}
			if !d.IsDir() {
				out = append(out, rel(p))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// shippedRole says how a shipped file configures bmpproxy: "config" (a
// bmpproxy config file), "compose", "kubernetes", "systemd" (a service
// unit), or "socket" (a socket unit, which configures nothing: it only
// passes a socket).
func shippedRole(t *testing.T, rel string) string {
	t.Helper()
	switch filepath.Ext(rel) {
	case ".service":
		return "systemd"
	case ".socket":
		return "socket"
	case ".yaml", ".yml":
	default:
		t.Fatalf("%s: TestShippedCollectors does not know how this file configures bmpproxy; teach shippedRole", rel)
	}
	b, err := os.ReadFile(filepath.Join(deployRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := yaml.NewDecoder(strings.NewReader(string(b))).Decode(&top); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	switch {
	case top["listeners"] != nil:
		return "config"
	case top["services"] != nil:
		return "compose"
	case top["apiVersion"] != nil:
		return "kubernetes"
	}
	t.Fatalf("%s: neither a bmpproxy config, a compose file nor a Kubernetes manifest", rel)
	return ""
}

// chain is the bmpproxies a shipped file starts on a router's path, the
// router's side first, and the collector at its end.
type chain struct {
	name string
	kind testtarget.Kind
	hops []invocation
}

// configHop is the invocation that runs the config file rel.
func configHop(rel string) invocation {
	return invocation{where: rel, args: []string{"--config", rel}, files: map[string]string{rel: rel}}
}

// configOf returns the repository file an invocation runs with --config,
// or "": for a ConfigMap's config, the manifest that defines it, whose
// declaration is the config's.
func configOf(inv invocation) string {
	for i, a := range inv.args {
		if i > 0 && (inv.args[i-1] == "--config" || inv.args[i-1] == "-c") {
			if f, ok := inv.configMaps[a]; ok {
				return f.manifest
			}
			return inv.files[a]
		}
	}
	return ""
}

// shippedChains reads every shipped file's declaration, checks that the
// declarations agree with each other, and returns the chains to run.
func shippedChains(t *testing.T) []chain {
	t.Helper()
	decl := map[string]declaration{}
	roles := map[string]string{}
	for _, f := range shippedFiles(t) {
		roles[f] = shippedRole(t, f)
		if roles[f] == "socket" {
			continue
		}
		d, err := readDeclaration(f)
		if err != nil {
			t.Error(err)
			continue
		}
		decl[f] = d
	}
	for f, d := range decl {
		if d.through != "" {
			if n, ok := decl[d.through]; !ok || roles[d.through] != "config" || n.kind != d.kind || !slices.Contains(n.behind, f) {
				t.Errorf("%s: through %s, which must be a shipped config for %s that says \"behind %s\"", f, d.through, d.kind, f)
			}
		}
		for _, b := range d.behind {
			if n, ok := decl[b]; !ok || n.through != f {
				t.Errorf("%s: behind %s, which must say \"through %s\"", f, b, f)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// extend follows "through" from the last hop's config.
	extend := func(hops []invocation) []invocation {
		if next := decl[configOf(hops[len(hops)-1])].through; next != "" {
			hops = append(hops, configHop(next))
		}
		return hops
	}
	// of checks that a deployment runs configs for its own collector.
	of := func(kind testtarget.Kind, hops []invocation) {
		for _, h := range hops {
			if c := configOf(h); c != "" && decl[c].kind != kind {
				t.Errorf("%s (collector: %s) runs %s, which is for %s", h.where, kind, c, decl[c].kind)
			}
		}
	}
	var out []chain
	var compose, kube, units []string
	for f, role := range roles {
		switch role {
		case "config":
			if len(decl[f].behind) == 0 {
				out = append(out, chain{f, decl[f].kind, extend([]invocation{configHop(f)})})
			}
		case "compose":
			compose = append(compose, f)
		case "kubernetes":
			kube = append(kube, f)
		case "systemd":
			units = append(units, f)
		}
	}
	covered := map[string]bool{}
	if len(compose) > 0 {
		// The compose file's bmpproxy services, ordered by their configs'
		// declarations: the one that feeds the other first.
		invs := composeInvocations(t)
		f := strings.Fields(invs[0].where)[0]
		covered[f] = true
		if decl[configOf(invs[1])].through == configOf(invs[0]) {
			invs[0], invs[1] = invs[1], invs[0]
		}
		if decl[configOf(invs[0])].through != configOf(invs[1]) {
			t.Errorf("%s: of its bmpproxy services, neither's config goes through the other's", f)
		}
		of(decl[f].kind, invs)
		out = append(out, chain{f, decl[f].kind, invs})
	}
	for _, inv := range append(kubernetesInvocations(t), systemdInvocations(t)...) {
		f := strings.Fields(inv.where)[0]
		covered[f] = true
		hops := extend([]invocation{inv})
		of(decl[f].kind, hops)
		out = append(out, chain{inv.where, decl[f].kind, hops})
	}
	for _, f := range slices.Concat(compose, kube, units) {
		if !covered[f] {
			t.Errorf("%s: no bmpproxy found in it to run", f)
		}
	}
	slices.SortFunc(out, func(a, b chain) int { return strings.Compare(a.name, b.name) })
	return out
}

// TestShippedDeclarations: every shipped file names the collector it is
// for, and the declarations of two-hop layouts agree.
func TestShippedDeclarations(t *testing.T) {
	for _, c := range shippedChains(t) {
		var hops []string
		for _, h := range c.hops {
			hops = append(hops, h.where)
		}
		t.Logf("%s: collector %s; bmpproxies %s", c.name, c.kind, strings.Join(hops, " → "))
	}
}

// standInTarget is the target a test gives a listener whose shipped
// target is target: a loopback address as shipped (the stand-in listens
// there, in the hop's namespace), anything else the same port on the
// collector namespace's address.
func standInTarget(t *testing.T, target string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		t.Fatalf("target %q: %v", target, err)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return target
	}
	return net.JoinHostPort(netns.Col4, port)
}

// standInConfig writes a copy of the config file path (from the
// repository's root, or absolute) in which every collector address is
// standInTarget's: each listener's target, each of its targets' target,
// and each of its pool's targets (a pool of names becomes a pool of the
// stand-in's addresses, one member each: a name resolves nowhere in the
// test's namespaces), and accept_proxy_from trusts the hub's addresses on
// the collector's link, where the first hop dials from; it returns the
// copy's path. Nothing else changes.
func standInConfig(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(repoFile(path))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	value := func(m *yaml.Node, key string) *yaml.Node {
		if m == nil || m.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == key {
				return m.Content[i+1]
			}
		}
		return nil
	}
	scalar := func(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }
	for _, l := range value(doc.Content[0], "listeners").Content {
		if v := value(l, "target"); v != nil {
			v.Value = standInTarget(t, v.Value)
		}
		if v := value(l, "targets"); v != nil {
			for _, leg := range v.Content {
				if v := value(leg, "target"); v != nil {
					v.Value = standInTarget(t, v.Value)
				}
			}
		}
		if v := value(value(l, "pool"), "targets"); v != nil {
			// One address or a list; the copy's is a list, with each
			// stand-in once (two targets may move to one address).
			targets := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				targets = v.Content
			}
			var members []*yaml.Node
			seen := map[string]bool{}
			for _, tg := range targets {
				if a := standInTarget(t, tg.Value); !seen[a] {
					seen[a] = true
					members = append(members, scalar(a))
				}
			}
			*v = yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle, Content: members}
		}
		if v := value(l, "accept_proxy_from"); v != nil {
			v.Kind, v.Style, v.Content = yaml.SequenceNode, yaml.FlowStyle, []*yaml.Node{
				scalar(netns.HubC4 + "/32"), scalar(netns.HubC6 + "/128"),
			}
		}
	}
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

// loadArgs returns the configuration the main command builds from args,
// with its own loader.
func loadArgs(t *testing.T, args []string) *conf.Config {
	t.Helper()
	app := newApp(io.Discard, io.Discard)
	var cfg *conf.Config
	app.Action = func(c *cli.Context) error {
		var err error
		cfg, err = newSource(c).load()
		return err
	}
	if err := app.Run(append([]string{"bmpproxy"}, args...)); err != nil {
		t.Fatalf("bmpproxy %s: %v", strings.Join(args, " "), err)
	}
	return cfg
}

// TestShippedCollectors runs every shipped example and deployment file
// against a stand-in of the collector it declares (testtarget.Kind: one
// that reads no PROXY header and takes the first byte for the BMP
// version, pmacct 1.7's IPv4-only header, or a PROXY v2 reader), with the
// bmpproxies of its chain as shipped, in network namespaces: the first in
// the proxy host's, a second (two hops) in the collector's. Only targets
// move (a listener's, its legs', its pool's), to the stand-in or the next
// hop, and accept_proxy_from, to the first hop's address; a Kubernetes
// ConfigMap's config is its data from the manifest, and a Secret's file a
// stand-in with the kubelet's mode. A router sends a BMP session over
// IPv6 and one over IPv4 to each BMP listener, and the collector must
// record each under the router's own address and port, from the header
// or from getpeername. A listener that is not BMP must send no header. A
// pool that sends v2 checks its members with a LOCAL header alone, which
// the collector must take for the proxy's own connection.
func TestShippedCollectors(t *testing.T) {
	chains := shippedChains(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces (CI runs as root)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	for _, c := range chains {
		t.Run(strings.NewReplacer("/", "_", " ", "_").Replace(c.name), func(t *testing.T) { runChain(t, c) })
	}
}

// runChain runs c in a topology of its own: see TestShippedCollectors.
func runChain(t *testing.T, c chain) {
	tp := netns.New(t, "bxs")
	spaces := []string{tp.Hub, tp.Col}
	if len(c.hops) > len(spaces) {
		t.Fatalf("%s: %d hops; the test places two", c.name, len(c.hops))
	}
	type hop struct {
		ns   string
		args []string
		cfg  *conf.Config
	}
	hops := make([]hop, len(c.hops))
	for i, inv := range c.hops {
		args := inv.resolve(t, func(rel string) string { return standInConfig(t, rel) })
		for j := range args {
			if j > 0 && (args[j-1] == "--target" || args[j-1] == "-t") {
				args[j] = standInTarget(t, args[j])
			} else if v, ok := strings.CutPrefix(args[j], "--target="); ok {
				args[j] = "--target=" + standInTarget(t, v)
			}
		}
		hops[i] = hop{spaces[i], args, loadArgs(t, args)}
		for _, l := range hops[i].cfg.Listeners {
			for tg, pp := range collectorTargets(l) {
				if !l.BMP && pp != conf.ProxyNone {
					t.Errorf("%s: listener %q has no BMP pre-check, so it is not for BMP, but sends %s to %s: the collector's other services read no header",
						inv.where, l.Name, pp, tg)
				}
			}
		}
	}

	// The stand-in, where the last hop's BMP listeners dial.
	last := hops[len(hops)-1]
	var lns []net.Listener
	listening := map[string]bool{}
	checked := false
	for _, l := range last.cfg.Listeners {
		if !l.BMP {
			continue
		}
		// A pool that sends v2 checks each member with a LOCAL header.
		checked = checked || (l.Pool != nil && l.Pool.ProxyProtocol == conf.ProxyV2)
		for tg := range collectorTargets(l) {
			ns, addrs := tp.Col, []string{netns.Col4, netns.Col6}
			if a, err := netip.ParseAddr(tg.Host); err == nil && a.IsLoopback() {
				ns, addrs = last.ns, []string{"127.0.0.1", "::1"}
			}
			for _, a := range addrs {
				addr := net.JoinHostPort(a, fmt.Sprint(tg.Port))
				if listening[ns+addr] {
					continue
				}
				listening[ns+addr] = true
				netns.Do(t, ns, func() {
					ln, err := net.Listen("tcp", addr)
					if err != nil {
						t.Errorf("stand-in collector on %s: %v", addr, err)
						return
					}
					lns = append(lns, ln)
				})
			}
		}
	}
	if len(lns) == 0 {
		t.Fatalf("%s: the last bmpproxy has no BMP listener (bmp: true, or --bmp)", c.name)
	}
	coll := testtarget.NewCollector(t, c.kind, lns...)

	// The bmpproxies, the collector's side first; each runs its
	// deployment's preparing commands (a Pod's init containers) first.
	for i := len(hops) - 1; i >= 0; i-- {
		h := hops[i]
		for _, b := range c.hops[i].before {
			if out, err := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + h.ns, binPath()}, b...)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: bmpproxy %s: %v\n%s", c.hops[i].where, strings.Join(b, " "), err, out)
			}
		}
		n := 0
		for _, l := range h.cfg.Listeners {
			n += len(l.Listen)
		}
		startCmd(t, n, exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + h.ns, binPath()}, h.args...)...))
	}

	// Routers, over IPv6 and IPv4, to each BMP listener of the first hop.
	sessions := 0
	for _, l := range hops[0].cfg.Listeners {
		if !l.BMP {
			continue
		}
		for _, a := range l.Listen {
			if !a.Addr().IsUnspecified() {
				t.Fatalf("%s: listener %q on %s: the test reaches only listeners on every address", c.name, l.Name, a)
			}
			for _, hub := range []string{netns.HubR6, netns.HubR4} {
				sessions++
				dst := net.JoinHostPort(hub, fmt.Sprint(a.Port()))
				name := fmt.Sprintf("router-%d", sessions)
				var conn net.Conn
				var err error
				netns.Do(t, tp.Rtr, func() { conn, err = net.DialTimeout("tcp", dst, binaryWait) })
				if err != nil {
					t.Errorf("%s: listener %q: a router cannot connect to %s: %v", c.name, l.Name, dst, err)
					continue
				}
				conn.Write(bmp.EncodeInitiation("bmpproxy shipping test", name))
				conn.(*net.TCPConn).CloseWrite()
				rec := coll.WaitFor(t, binaryWait, name)
				conn.Close()
				router := conn.LocalAddr().String()
				seen, err := c.kind.Records(rec)
				switch {
				case err != nil:
					t.Errorf("%s: router %s → %s: %v", c.name, router, dst, err)
				case seen.Addr.String() != router:
					t.Errorf("%s: router %s → %s: %s records %s (from %s); want the router's own address and port",
						c.name, router, dst, c.kind, seen.Addr, seen.From)
				default:
					t.Logf("%s: router %s → %s: %s records %s (from %s)", c.name, router, dst, c.kind, seen.Addr, seen.From)
				}
			}
		}
	}

	// A pool checks each member every health_interval, the first time at
	// once, with only a PROXY v2 LOCAL header; the collector must take
	// it for the proxy's own connection: not drop it, and see no router.
	if checked {
		for _, rec := range coll.WaitForLocalOnly(t, binaryWait, 1) {
			if seen, err := c.kind.Records(rec); err != nil {
				t.Errorf("%s: a pool's health check (%s): %v", c.name, rec, err)
			} else {
				t.Logf("%s: a pool's health check (%s): %s takes it for the proxy's own connection, %s (from %s)", c.name, rec, c.kind, seen.Addr, seen.From)
			}
		}
	}
}

// collectorTargets returns where listener l dials for a router session,
// with the PROXY header each gets: its targets, or its pool's (each
// literal a member; a name's members are what it resolves to).
func collectorTargets(l conf.Listener) map[conf.Target]conf.ProxyProtocol {
	out := map[conf.Target]conf.ProxyProtocol{}
	if l.Pool != nil {
		for _, tg := range l.Pool.Targets {
			out[tg] = l.Pool.ProxyProtocol
		}
		return out
	}
	for _, leg := range l.Targets {
		out[leg.Target] = leg.ProxyProtocol
	}
	if len(out) == 0 && !l.Target.IsZero() {
		out[l.Target] = l.ProxyProtocol
	}
	return out
}
