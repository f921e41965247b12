// Command bench measures bmpproxy against docker-proxy, HAProxy, socat,
// nginx and an io.Copy reference proxy, on loopback, in one run, and writes
// bench/RESULTS.md.
//
//	go run ./bench            # the full run (as root; peers from bench/install.sh)
//	go run ./bench -smoke     # every peer, small sizes: checks the harness itself
//	go run ./bench upgrade    # the accept pause of an upgrade against open connections
//	go run ./bench -only fanout2,fanout4,resync,ribcache  # fan-out and resync only
//
// The proxy under test is pinned to CPU 0; the load generator and the sink
// run on CPU 1. A sink parses each peer's PROXY header, checks it carries
// the client's address, and counts bytes, so loss is detected, not assumed.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type options struct {
	smoke       bool
	out         string
	runs        int
	only        string
	peers       string
	bulkSize    int64
	manyStreams int
	manySize    int64
	rrCount     int
	shortCount  int
	shortConc   int
	idleConns   int
	capacity    int
	table       tableSpec // the full-table-like BMP workload (resync, ribcache)
	fanRate     float64   // Gbit/s the fan-out router sends at; 0: as fast as it can
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sink" {
		fs := flag.NewFlagSet("sink", flag.ExitOnError)
		addr := fs.String("listen", "127.0.0.1:0", "address")
		n := fs.Int("n", 1, "listeners on that address (with port 0, each on a port of its own)")
		rcvbuf := fs.Int("rcvbuf", 0, "SO_RCVBUF of the accepted sockets; 0: the kernel tunes it")
		fs.Parse(os.Args[2:])
		if err := runSink(*addr, *n, *rcvbuf); err != nil {
			fmt.Fprintln(os.Stderr, "sink:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "upgrade" {
		// The pause of an upgrade against open connections:
		// bench upgrade -conns 0,1000,5000
		if err := runUpgradeBench(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "upgrade:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "ribcache" {
		// The resync cache's figures, in a process of their own:
		// bench ribcache -table-peers 8 (the harness pins it, GOMAXPROCS=1)
		if err := runRibCache(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "ribcache:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "load" {
		// One workload against an address, for profiling a proxy by hand:
		// bench load -addr 127.0.0.1:5000 -workload short -header 2
		fs := flag.NewFlagSet("load", flag.ExitOnError)
		addr := fs.String("addr", "", "proxy address")
		wl := fs.String("workload", "short", "bulk1, bulk8, many, rr, short, idle, capacity, fanout2 or fanout4")
		header := fs.Int("header", 2, "PROXY header the sink should see: 0 none, 1 v1, 2 v2")
		pid := fs.Int("pid", 0, "proxy pid, for CPU and memory figures")
		rate := fs.Float64("rate", 0, "fanout2, fanout4: Gbit/s the router sends at; 0: as fast as the proxy takes it")
		sinks := fs.String("sinks", "", "fanout2, fanout4: comma-separated addresses of the proxy's targets, each a `bench sink`, in order")
		var o options
		o.sizeFlags(fs)
		fs.Parse(os.Args[2:])
		for _, w := range workloads(&o) {
			if w.key == *wl && w.run != nil {
				t := target{addr: *addr, pid: *pid, header: byte(*header), rate: *rate * 1e9}
				if *sinks != "" {
					t.sinks = strings.Split(*sinks, ",")
				}
				m, err := w.run(t, &o)
				if err != nil {
					fmt.Fprintln(os.Stderr, "load:", err)
					os.Exit(1)
				}
				fmt.Println(m)
				return
			}
		}
		fmt.Fprintln(os.Stderr, "load: unknown workload", *wl)
		os.Exit(2)
	}
	var o options
	flag.BoolVar(&o.smoke, "smoke", false, "every peer and workload with small sizes and one run (for CI)")
	flag.StringVar(&o.out, "out", "bench/RESULTS.md", "results file")
	flag.IntVar(&o.runs, "runs", 5, "runs per row; each row reports the median, min and max")
	flag.StringVar(&o.only, "only", "", "comma-separated workload keys to run (bulk1,bulk8,many,rr,short,idle,capacity,pool3,fanout2,fanout4,resync,ribcache); empty: all")
	flag.StringVar(&o.peers, "peers", "", "comma-separated substrings; only peers whose name contains one run (for iterating)")
	o.sizeFlags(flag.CommandLine)
	flag.Parse()
	if o.smoke {
		o.runs, o.bulkSize, o.manyStreams, o.manySize = 1, 64<<20, 8, 8<<20
		o.rrCount, o.shortCount, o.idleConns, o.capacity = 500, 500, 200, 300
		o.table = tableSpec{peers: 2, v4: 20_000, v6: 4_000, attrSets: 500}
	}
	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sizeFlags registers the workload sizes on fs.
func (o *options) sizeFlags(fs *flag.FlagSet) {
	fs.Int64Var(&o.bulkSize, "bulk", 4*gib, "bytes in the single-stream bulk test (the 8-stream test splits the same total)")
	fs.IntVar(&o.manyStreams, "many", 100, "concurrent streams in the unprivileged test")
	fs.Int64Var(&o.manySize, "many-size", 64<<20, "bytes per stream in the unprivileged test")
	fs.IntVar(&o.rrCount, "rr", 20000, "round trips in the request/response test")
	fs.IntVar(&o.shortCount, "short", 20000, "connections in the short-connection test")
	fs.IntVar(&o.shortConc, "short-conc", 32, "concurrency of the short-connection test")
	fs.IntVar(&o.idleConns, "idle", 3000, "connections in the idle test (each peer must fit them in its fd limit)")
	fs.IntVar(&o.capacity, "capacity", 10000, "connections the capacity test tries to hold open")
	o.table.flags(fs)
	fs.Float64Var(&o.fanRate, "fanout-rate", 2, "Gbit/s the router sends at in the fan-out workloads' paced rows (and bench load's fan-out); 0: no paced rows")
}

const (
	proxyCore = "0"
	loadCore  = "1"
	pinnedEnv = "BMPPROXY_BENCH_PINNED"
)

func run(o *options) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the harness raises fd limits and runs peers as nobody")
	}
	// runtime.NumCPU counts the CPUs this process may use, so it is
	// checked before pinning; the pinned child learns it from pinnedEnv.
	pinned := os.Getenv(pinnedEnv) == "1"
	if !pinned && os.Getenv(pinnedEnv) == "" && runtime.NumCPU() >= 2 {
		// Re-run on the load core; the proxy under test gets the other.
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command("taskset", append([]string{"-c", loadCore, exe}, os.Args[1:]...)...)
		cmd.Env = append(os.Environ(), pinnedEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			return err
		}
		return nil
	}
	// Raise the fd limit as far as this machine allows; peers inherit it.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	want := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
		// No CAP_SYS_RESOURCE: the hard limit is all there is.
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	} else {
		lim = want
	}

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bmpproxy-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // peers run as nobody read from here
		return err
	}
	e := &env{dir: dir}
	if pinned {
		e.proxyCore = proxyCore
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	e.nobody = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}

	fmt.Println("building bmpproxy and the io.Copy reference")
	e.bmpproxy = filepath.Join(dir, "bmpproxy")
	e.refproxy = filepath.Join(dir, "refproxy")
	for bin, pkg := range map[string]string{e.bmpproxy: "./cmd/bmpproxy", e.refproxy: "./bench/refproxy"} {
		if err := goBuild(root, bin, pkg); err != nil {
			return err
		}
	}
	if err := checkPeers(); err != nil {
		return err
	}

	sink, addrs, err := startSink("", 1)
	if err != nil {
		return err
	}
	defer sink.stop()
	e.sinkAddr = addrs[0]
	sink2Core := ""
	if pinned {
		sink2Core = proxyCore
	}
	sink2, addrs2, err := startSink(sink2Core, 1)
	if err != nil {
		return err
	}
	defer sink2.stop()
	e.sink2Addr = addrs2[0]

	wls := workloads(o)
	fanSinks := 0
	for _, w := range wls {
		if !selected(o.only, w.key) {
			continue
		}
		fanSinks = max(fanSinks, w.sinks)
		if w.collector && e.collector == nil {
			if e.collector, err = startCollector(); err != nil {
				return err
			}
			defer e.collector.close()
		}
	}
	if fanSinks > 0 {
		// The fan-out sinks: one process on the load core, a listener
		// for each target of the widest fan-out. In one process the Go
		// scheduler takes turns among them every few hundred KiB; as
		// processes, the kernel's time slices let one sink run
		// milliseconds ahead while another waits, which at loopback
		// speed is more than a leg's 4 MiB buffer.
		fs, addrs, err := startSink("", fanSinks)
		if err != nil {
			return err
		}
		defer fs.stop()
		e.fanSinks = addrs
	}

	res := &results{opts: o, started: time.Now(), pinned: pinned, fdLimit: lim.Cur, root: root}
	// Runs are interleaved: every peer's run 1, then every peer's run 2, so
	// drift in the machine's noise spreads over all peers alike. Workloads
	// with rows of their own (fan-out, resync) come after the shared peers
	// in each round, and the ones that run no proxy last.
	for i := 0; i < o.runs; i++ {
		for _, p := range peers() {
			if !selectedPeer(o.peers, p.name) {
				continue
			}
			for _, w := range wls {
				if !selected(o.only, w.key) || w.own != nil || w.self != nil || !w.applies(p) {
					continue
				}
				if err := runOne(e, res, w, p, i, o); err != nil {
					return err
				}
			}
		}
		for _, w := range wls {
			if !selected(o.only, w.key) || w.own == nil {
				continue
			}
			for _, p := range w.own {
				if !selectedPeer(o.peers, p.name) {
					continue
				}
				if err := runOne(e, res, w, p, i, o); err != nil {
					return err
				}
			}
		}
		for _, w := range wls {
			if !selected(o.only, w.key) || w.self == nil {
				continue
			}
			argv := w.self.command(e)
			res.command(w.self.name, strings.Join(argv, " "))
			fmt.Printf("%-34s %-8s run %d/%d ... ", w.self.name, w.key, i+1, o.runs)
			m, err := w.self.run(argv)
			if err != nil {
				return fmt.Errorf("%s: %w", w.key, err)
			}
			fmt.Println(m)
			res.add(w.key, w.self.name, m)
		}
	}
	res.finished = time.Now()
	report := res.markdown(wls)
	out := o.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(report)
	return nil
}

// runOne runs workload w against a fresh process of peer p.
func runOne(e *env, res *results, w workload, p *peer, i int, o *options) error {
	if reason, skip := p.skip[w.key]; skip {
		res.skip(w.key, p.name, reason)
		return nil
	}
	// A fresh process for every run: one run's leftovers (heap, pooled
	// pipes, kept connections) do not colour the next.
	r, err := p.start(e)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	res.command(p.name, r.command)
	fmt.Printf("%-34s %-8s run %d/%d ... ", p.name, w.key, i+1, o.runs)
	m, err := w.run(target{addr: r.addr, pid: r.pid, header: p.header, sinks: r.sinks, collector: r.collector, resync: r.resync, rate: r.rate}, o)
	r.stop()
	if err != nil {
		out, _ := os.ReadFile(r.log)
		return fmt.Errorf("%s, %s: %w\npeer output:\n%s", p.name, w.key, err, tail(out, 2000))
	}
	fmt.Println(m)
	res.add(w.key, p.name, m)
	return nil
}

func (w workload) applies(p *peer) bool {
	if p.baseline {
		return true
	}
	switch w.peers {
	case privileged:
		return !p.unpriv
	case unprivileged:
		return p.unpriv
	}
	return true
}

func selected(only, key string) bool {
	if only == "" {
		return true
	}
	for _, k := range strings.Split(only, ",") {
		if strings.TrimSpace(k) == key {
			return true
		}
	}
	return false
}

func selectedPeer(filter, name string) bool {
	if filter == "" {
		return true
	}
	for _, f := range strings.Split(filter, ",") {
		if f != "" && strings.Contains(name, f) {
			return true
		}
	}
	return false
}

// checkPeers fails, naming the install script, if a peer is missing.
func checkPeers() error {
	var missing []string
	for _, bin := range []string{"/usr/sbin/docker-proxy", "haproxy", "socat", "nginx", "/usr/lib/nginx/modules/ngx_stream_module.so", "taskset"} {
		if strings.HasPrefix(bin, "/") {
			if _, err := os.Stat(bin); err != nil {
				missing = append(missing, bin)
			}
			continue
		}
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing peers %s: run bench/install.sh", strings.Join(missing, ", "))
	}
	return nil
}

// startSink runs this binary's sink mode with n listeners and the extra
// sink flags, pinned to core if given, and returns their addresses.
func startSink(core string, n int, extra ...string) (*running, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	argv := append([]string{exe, "sink", "-listen", "127.0.0.1:0", "-n", strconv.Itoa(n)}, extra...)
	if core != "" {
		argv = append([]string{"taskset", "-c", core}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addrs := strings.Fields(line)
	if err != nil || len(addrs) != n {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, nil, fmt.Errorf("sink: %q: %v", line, err)
	}
	return &running{cmd: cmd, pid: cmd.Process.Pid}, addrs, nil
}

// goBuild builds package pkg of the module at root into out.
func goBuild(root, out, pkg string) error {
	build := exec.Command("go", "build", "-o", out, pkg)
	build.Dir, build.Stdout, build.Stderr = root, os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build %s: %w", pkg, err)
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the bmpproxy module")
	}
	return filepath.Dir(mod), nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
