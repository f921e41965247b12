package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// results collects every run, by workload and peer, in peer order.
type results struct {
	opts              *options
	started, finished time.Time
	pinned            bool
	fdLimit           uint64
	root              string                          // module root, for bench/findings.md
	order             []string                        // peer names, first seen first
	runs              map[string]map[string][]metrics // workload → peer → runs
	skipped           map[string]map[string]string    // workload → peer → reason
	commands          map[string]string               // peer → command line
}

func (r *results) seen(peer string) {
	if !slices.Contains(r.order, peer) {
		r.order = append(r.order, peer)
	}
}

func (r *results) add(wl, peer string, m metrics) {
	r.seen(peer)
	if r.runs == nil {
		r.runs = map[string]map[string][]metrics{}
	}
	if r.runs[wl] == nil {
		r.runs[wl] = map[string][]metrics{}
	}
	r.runs[wl][peer] = append(r.runs[wl][peer], m)
}

func (r *results) skip(wl, peer, reason string) {
	r.seen(peer)
	if r.skipped == nil {
		r.skipped = map[string]map[string]string{}
	}
	if r.skipped[wl] == nil {
		r.skipped[wl] = map[string]string{}
	}
	r.skipped[wl][peer] = reason
}

func (r *results) command(peer, cmd string) {
	if r.commands == nil {
		r.commands = map[string]string{}
	}
	r.commands[peer] = cmd
}

// stat is the median, min and max of one metric over the runs.
type stat struct {
	med, min, max float64
	ok            bool
}

func (r *results) stat(wl, peer, key string) stat {
	var v []float64
	for _, m := range r.runs[wl][peer] {
		if x, ok := m[key]; ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return stat{}
	}
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return stat{med: med, min: v[0], max: v[len(v)-1], ok: true}
}

// target is one goal bmpproxy must reach, as a ratio against a peer
// measured in the same run.
type goal struct {
	text string
	eval func(r *results) (value string, met bool, ok bool)
}

// ratio compares bmpproxy's median to another peer's.
func ratioGoal(text, wl, key, ours, theirs string, atLeast bool, bound float64) goal {
	return goal{text: text, eval: func(r *results) (string, bool, bool) {
		a, b := r.stat(wl, ours, key), r.stat(wl, theirs, key)
		if !a.ok || !b.ok || b.med == 0 {
			return "not measured", false, false
		}
		q := a.med / b.med
		met := q >= bound
		if !atLeast {
			met = q <= bound
		}
		return fmt.Sprintf("%.2f× (%.3g vs %.3g)", q, a.med, b.med), met, true
	}}
}

// absGoal compares a row's median with a fixed bound.
func absGoal(text, wl, key, row string, atLeast bool, bound float64) goal {
	return goal{text: text, eval: func(r *results) (string, bool, bool) {
		a := r.stat(wl, row, key)
		if !a.ok {
			return "not measured", false, false
		}
		met := a.med >= bound
		if !atLeast {
			met = a.med <= bound
		}
		return fmt.Sprintf("%.3g", a.med), met, true
	}}
}

// fanGoal is ratioGoal for a fan-out row of legs targets, met only if
// every leg got every byte in every run: with a leg cut, the row measured
// fewer legs.
func fanGoal(text, wl, key, ours, theirs string, legs int, atLeast bool, bound float64) goal {
	g := ratioGoal(text, wl, key, ours, theirs, atLeast, bound)
	return goal{text: text, eval: func(r *results) (string, bool, bool) {
		v, met, ok := g.eval(r)
		if l := r.stat(wl, ours, "legs_intact"); ok && l.ok && l.min < float64(legs) {
			return v + fmt.Sprintf("; legs cut: as few as %.0f of %d kept every byte", l.min, legs), false, true
		}
		return v, met, ok
	}}
}

func goals(o *options) []goal {
	paced := fmt.Sprintf(", router at %g Gbit/s", o.fanRate)
	return []goal{
		ratioGoal("Bulk, one stream: throughput ≥ 1.0× the io.Copy reference", "bulk1", "gbps", "bmpproxy", "io.Copy reference", true, 1.0),
		ratioGoal("Bulk, one stream: throughput ≥ 1.0× HAProxy with splicing", "bulk1", "gbps", "bmpproxy", "HAProxy, splice", true, 1.0),
		ratioGoal("Bulk, one stream: proxy CPU per GiB ≤ 0.9× the io.Copy reference", "bulk1", "cpu_per_gib", "bmpproxy", "io.Copy reference", false, 0.9),
		ratioGoal("Many streams, unprivileged: throughput ≥ 1.5× the io.Copy reference as nobody", "many", "gbps", "bmpproxy (nobody)", "io.Copy reference (nobody)", true, 1.5),
		ratioGoal("Many streams, unprivileged: throughput ≥ 1.0× bmpproxy's own copy fallback", "many", "gbps", "bmpproxy (nobody)", "bmpproxy --splice=false (nobody)", true, 1.0),
		{text: "Idle: exactly 2 fds per idle proxied connection", eval: func(r *results) (string, bool, bool) {
			s := r.stat("idle", "bmpproxy", "fds_per_conn")
			if !s.ok {
				return "not measured", false, false
			}
			return fmt.Sprintf("%.2f", s.med), math.Abs(s.med-2) < 0.01, true
		}},
		ratioGoal("Idle: RSS per connection ≤ 0.5× the io.Copy reference", "idle", "rss_kib_per_conn", "bmpproxy", "io.Copy reference", false, 0.5),
		ratioGoal("Short connections: proxy CPU per connection ≤ 1.0× nginx", "short", "cpu_per_conn_us", "bmpproxy", "nginx stream", false, 1.0),
		ratioGoal("Short connections: connections/s ≥ 1.0× docker-proxy", "short", "conns_per_s", "bmpproxy", "docker-proxy", true, 1.0),
		ratioGoal("Request/response: p50 ≤ 1.0× docker-proxy", "rr", "p50_us", "bmpproxy", "docker-proxy", false, 1.0),
		ratioGoal("Pool of 3: bulk throughput ≥ 0.95× one target", "pool3", "gbps", "bmpproxy, pool of 3", "bmpproxy, 1 target", true, 0.95),
		ratioGoal("Pool of 3: proxy CPU per GiB ≤ 1.05× one target", "pool3", "cpu_per_gib", "bmpproxy, pool of 3", "bmpproxy, 1 target", false, 1.05),
		fanGoal("Fan-out to 2: throughput ≥ 0.8× one target, every leg intact", "fanout2", "gbps", "bmpproxy, 2 targets", "bmpproxy, 1 target", 2, true, 0.8),
		fanGoal("Fan-out to 2: proxy CPU per GiB ≤ 1.5× one target, every leg intact", "fanout2", "cpu_per_gib", "bmpproxy, 2 targets", "bmpproxy, 1 target", 2, false, 1.5),
		fanGoal("Fan-out to 2, router paced: proxy CPU per GiB ≤ 1.5× one target, every leg intact", "fanout2", "cpu_per_gib",
			"bmpproxy, 2 targets"+paced, "bmpproxy, 1 target"+paced, 2, false, 1.5),
		fanGoal("Fan-out to 4: throughput ≥ 0.8× one target, every leg intact", "fanout4", "gbps", "bmpproxy, 4 targets", "bmpproxy, 1 target", 4, true, 0.8),
		fanGoal("Fan-out to 4: proxy CPU per GiB ≤ 2.5× one target, every leg intact", "fanout4", "cpu_per_gib", "bmpproxy, 4 targets", "bmpproxy, 1 target", 4, false, 2.5),
		fanGoal("Fan-out to 4, router paced: proxy CPU per GiB ≤ 2.5× one target, every leg intact", "fanout4", "cpu_per_gib",
			"bmpproxy, 4 targets"+paced, "bmpproxy, 1 target"+paced, 4, false, 2.5),
		ratioGoal("Fan-out to 2: proxy CPU per GiB ≤ 1.0× the tee floor's to 2", "fanout2", "cpu_per_gib", "bmpproxy, 2 targets", "tee floor, 2 targets", false, 1.0),
		ratioGoal("Fan-out to 4: proxy CPU per GiB ≤ 1.0× the tee floor's to 4", "fanout4", "cpu_per_gib", "bmpproxy, 4 targets", "tee floor, 4 targets", false, 1.0),
		ratioGoal("The tee floor itself: CPU per GiB to 2 ≤ 1.5× to 1 (the issue's bound, for the kernel alone)", "fanout2", "cpu_per_gib", "tee floor, 2 targets", "tee floor, 1 target", false, 1.5),
		ratioGoal("The tee floor itself: CPU per GiB to 4 ≤ 2.5× to 1 (the issue's bound, for the kernel alone)", "fanout4", "cpu_per_gib", "tee floor, 4 targets", "tee floor, 1 target", false, 2.5),
		absGoal("Resync cache: ingest ≥ 2 M routes/s on one core", "ribcache", "ingest_mroutes_per_s", "bmp/rib, GOMAXPROCS=1", true, 2),
		absGoal("Resync cache: ≤ 64 bytes per cached route (heap), full-table-like workload", "ribcache", "heap_b_per_route", "bmp/rib, GOMAXPROCS=1", false, 64),
		absGoal("Resync cache: replay ≥ 1 M routes/s", "ribcache", "replay_mroutes_per_s", "bmp/rib, GOMAXPROCS=1", true, 1),
		absGoal("Resync through bmpproxy: the router's table at ≥ 2 M routes/s (proxy on one core)", "resync", "mroutes_per_s", "bmpproxy --bmp --resync", true, 2),
		absGoal("Resync through bmpproxy: replay to a restarted collector ≥ 1 M routes/s", "resync", "replay_mroutes_per_s", "bmpproxy --bmp --resync", true, 1),
	}
}

func (r *results) markdown(wls []workload) string {
	var b strings.Builder
	o := r.opts
	kind := "full run"
	if o.smoke {
		kind = "smoke run (small sizes, one run: checks the harness, not the numbers)"
	}
	fmt.Fprintf(&b, "# bmpproxy benchmark results\n\n")
	fmt.Fprintf(&b, "Generated by `go run ./bench%s` (%s), %s, in %s.\n\n",
		flagsUsed(), kind, r.started.UTC().Format("2006-01-02 15:04 MST"), r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(&b, "- Machine: %s, %d cores, Linux %s, %s.\n", cpuModel(), onlineCPUs(), kernel(), runtime.Version())
	if r.pinned {
		fmt.Fprintf(&b, "- Pinning: the proxy under test runs on CPU %s (taskset); the load generator and the sink run on CPU %s.\n", proxyCore, loadCore)
	} else {
		fmt.Fprintf(&b, "- Pinning: none (fewer than 2 CPUs).\n")
	}
	fmt.Fprintf(&b, "- RLIMIT_NOFILE for every process: %d (the hard limit here; raising it needs CAP_SYS_RESOURCE).\n", r.fdLimit)
	fmt.Fprintf(&b, "- Each cell is the median of %d run(s), with min–max. Runs are interleaved across peers, and every run starts a fresh peer process.\n", o.runs)
	fmt.Fprintf(&b, "- The sink checks every byte count and that each PROXY header carries the client's real address; a mismatch aborts the run.\n")
	fmt.Fprintf(&b, "- CPU is the proxy's utime+stime (+ reaped children) from /proc/PID/stat, 10 ms resolution. RSS is VmRSS.\n\n")

	b.WriteString("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, g := range goals(o) {
		v, met, ok := g.eval(r)
		verdict := "missed"
		switch {
		case !ok:
			verdict = "not measured"
		case met:
			verdict = "met"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", g.text, v, verdict)
	}
	b.WriteString("\n")

	for _, w := range wls {
		if r.runs[w.key] == nil && r.skipped[w.key] == nil {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n| peer |", w.title)
		for _, c := range w.columns {
			fmt.Fprintf(&b, " %s |", c.label)
		}
		b.WriteString("\n|---|")
		for range w.columns {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, p := range r.order {
			if reason, ok := r.skipped[w.key][p]; ok {
				fmt.Fprintf(&b, "| %s | skipped: %s |%s\n", p, reason, strings.Repeat(" |", len(w.columns)-1))
				continue
			}
			if _, ok := r.runs[w.key][p]; !ok {
				continue
			}
			fmt.Fprintf(&b, "| %s |", p)
			for _, c := range w.columns {
				s := r.stat(w.key, p, c.key)
				if !s.ok {
					b.WriteString(" – |")
					continue
				}
				if c.format == "bool" {
					fmt.Fprintf(&b, " %s |", yesNo(s.min == 1 && s.max == 1))
					continue
				}
				med := fmt.Sprintf(c.format, s.med)
				if o.runs > 1 {
					fmt.Fprintf(&b, " %s (%s–%s) |", med, fmt.Sprintf(c.format, s.min), fmt.Sprintf(c.format, s.max))
				} else {
					fmt.Fprintf(&b, " %s |", med)
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		if w.note != "" {
			b.WriteString(w.note + "\n\n")
		}
	}

	if f, err := os.ReadFile(filepath.Join(r.root, "bench", "findings.md")); err == nil {
		b.Write(f)
		b.WriteString("\n")
	}

	b.WriteString("## Peers and their exact commands\n\n| peer | command |\n|---|---|\n")
	for _, p := range r.order {
		if c, ok := r.commands[p]; ok {
			fmt.Fprintf(&b, "| %s | `%s` |\n", p, c)
		}
	}
	b.WriteString("\nVersions: " + versions() + "\n")
	return b.String()
}

func flagsUsed() string {
	if len(os.Args) <= 1 {
		return ""
	}
	return " " + strings.Join(os.Args[1:], " ")
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func versions() string {
	var parts []string
	for _, c := range [][]string{
		{"haproxy", "-v"},
		{"nginx", "-v"},
		{"socat", "-V"},
		{"dpkg-query", "-W", "-f", "docker.io ${Version}", "docker.io"},
	} {
		out, _ := exec.Command(c[0], c[1:]...).CombinedOutput()
		line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		if c[0] == "socat" {
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "socat version") {
					line = strings.TrimSpace(l)
				}
			}
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// onlineCPUs counts the machine's CPUs, not just those this process may use.
func onlineCPUs() int {
	n := 0
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, found := strings.Cut(r, "-")
		a, _ := strconv.Atoi(lo)
		z := a
		if found {
			z, _ = strconv.Atoi(hi)
		}
		n += z - a + 1
	}
	return n
}
