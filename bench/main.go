// Command bench measures bmpproxy against docker-proxy, HAProxy, socat,
// nginx and an io.Copy reference proxy, on loopback, in one run, and writes
// bench/RESULTS.md.
//
//	go run ./bench            # the full run (as root; peers from bench/install.sh)
//	go run ./bench -smoke     # every peer, small sizes: checks the harness itself
//	go run ./bench upgrade    # the accept pause of an upgrade against open connections
//
// The proxy under test is pinned to CPU 0; the load generator and the sink
// run on CPU 1. A sink parses each peer's PROXY header, checks it carries
// the client's address, and counts bytes, so loss is detected, not assumed.
package main

import (
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
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sink" {
		fs := flag.NewFlagSet("sink", flag.ExitOnError)
		addr := fs.String("listen", "127.0.0.1:0", "address")
		fs.Parse(os.Args[2:])
		if err := runSink(*addr); err != nil {
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
	if len(os.Args) > 1 && os.Args[1] == "load" {
		// One workload against an address, for profiling a proxy by hand:
		// bench load -addr 127.0.0.1:5000 -workload short -header 2
		fs := flag.NewFlagSet("load", flag.ExitOnError)
		addr := fs.String("addr", "", "proxy address")
		wl := fs.String("workload", "short", "bulk1, bulk8, many, rr, short, idle or capacity")
		header := fs.Int("header", 2, "PROXY header the sink should see: 0 none, 1 v1, 2 v2")
		pid := fs.Int("pid", 0, "proxy pid, for CPU and memory figures")
		var o options
		o.sizeFlags(fs)
		fs.Parse(os.Args[2:])
		for _, w := range workloads(&o) {
			if w.key == *wl {
				m, err := w.run(target{addr: *addr, pid: *pid, header: byte(*header)}, &o)
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
	flag.StringVar(&o.only, "only", "", "comma-separated workload keys to run (bulk1,bulk8,many,rr,short,idle,capacity); empty: all")
	flag.StringVar(&o.peers, "peers", "", "comma-separated substrings; only peers whose name contains one run (for iterating)")
	o.sizeFlags(flag.CommandLine)
	flag.Parse()
	if o.smoke {
		o.runs, o.bulkSize, o.manyStreams, o.manySize = 1, 64<<20, 8, 8<<20
		o.rrCount, o.shortCount, o.idleConns, o.capacity = 500, 500, 200, 300
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

	sink, addr, err := startSink("")
	if err != nil {
		return err
	}
	defer sink.stop()
	e.sinkAddr = addr
	sink2Core := ""
	if pinned {
		sink2Core = proxyCore
	}
	sink2, addr2, err := startSink(sink2Core)
	if err != nil {
		return err
	}
	defer sink2.stop()
	e.sink2Addr = addr2

	res := &results{opts: o, started: time.Now(), pinned: pinned, fdLimit: lim.Cur, root: root}
	wls := workloads(o)
	// Runs are interleaved: every peer's run 1, then every peer's run 2, so
	// drift in the machine's noise spreads over all peers alike.
	for i := 0; i < o.runs; i++ {
		for _, p := range peers() {
			if !selectedPeer(o.peers, p.name) {
				continue
			}
			for _, w := range wls {
				if !selected(o.only, w.key) || !w.applies(p) {
					continue
				}
				if reason, skip := p.skip[w.key]; skip {
					res.skip(w.key, p.name, reason)
					continue
				}
				// A fresh process for every run: one run's leftovers (heap,
				// pooled pipes, kept connections) do not colour the next.
				r, err := p.start(e)
				if err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
				res.command(p.name, r.command)
				fmt.Printf("%-34s %-8s run %d/%d ... ", p.name, w.key, i+1, o.runs)
				m, err := w.run(target{addr: r.addr, pid: r.pid, header: p.header}, o)
				r.stop()
				if err != nil {
					out, _ := os.ReadFile(r.log)
					return fmt.Errorf("%s, %s: %w\npeer output:\n%s", p.name, w.key, err, tail(out, 2000))
				}
				fmt.Println(m)
				res.add(w.key, p.name, m)
			}
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

// startSink runs this binary's sink mode, pinned to core if given.
func startSink(core string) (*running, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	argv := []string{exe, "sink", "-listen", "127.0.0.1:0"}
	if core != "" {
		argv = append([]string{"taskset", "-c", core}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	line := make([]byte, 64)
	n, err := out.Read(line)
	if err != nil {
		cmd.Process.Kill()
		return nil, "", fmt.Errorf("sink: %w", err)
	}
	return &running{cmd: cmd, pid: cmd.Process.Pid}, strings.TrimSpace(string(line[:n])), nil
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
