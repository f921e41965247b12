package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// env is what every peer needs to start.
type env struct {
	dir       string     // scratch directory, world-readable
	bmpproxy  string     // built binary
	refproxy  string     // built binary
	proxyCore string     // taskset CPU list for the proxy under test; empty: no pinning
	sinkAddr  string     // sink on the load generator's core
	sink2Addr string     // sink on the proxy's core (fair two-core direct reference)
	fanSinks  []string   // sinks on the load core for the fan-out workloads' targets
	collector *collector // the resync workload's collector, in this process
	nobody    *syscall.Credential
}

// peer is one proxy (or none) under test.
type peer struct {
	name   string
	header byte // the PROXY header the sink must see
	// unpriv marks peers run as an unprivileged user; they take part in
	// the unprivileged workloads only.
	unpriv bool
	// baseline marks the no-proxy references, which take part in every
	// workload they can run: they show the load core's ceiling.
	baseline bool
	// skip names workloads this peer cannot run, with the reason.
	skip map[string]string
	// start launches the peer in front of e's sink and returns it once it
	// accepts connections.
	start func(e *env) (*running, error)
}

// running is a started peer.
type running struct {
	addr    string    // where clients connect
	pid     int       // the proxy process whose CPU, RSS and fds are measured; 0 for none
	command string    // the exact command line, for the results file
	cmd     *exec.Cmd // nil for direct
	log     string    // where its output goes
	// What the workload needs to know of the peer's targets.
	sinks     []string
	collector *collector
	resync    bool
	rate      float64 // bits/s the router sends at; 0: as fast as it can
}

func (r *running) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) // its process group: socat's children too
	r.cmd.Wait()
}

func peers() []*peer {
	return []*peer{
		{
			name: "direct", header: headerNone, baseline: true,
			skip: map[string]string{"idle": "no proxy process", "capacity": "no proxy process"},
			start: func(e *env) (*running, error) {
				return &running{addr: e.sinkAddr, command: "(client → sink, both on the load core)"}, nil
			},
		},
		{
			name: "direct, sink on proxy core", header: headerNone, baseline: true,
			skip: map[string]string{"idle": "no proxy process", "capacity": "no proxy process"},
			start: func(e *env) (*running, error) {
				return &running{addr: e.sink2Addr, command: "(client → sink, sink pinned to the proxy core)"}, nil
			},
		},
		{
			name: "io.Copy reference", header: headerV2,
			start: func(e *env) (*running, error) {
				return launch(e, "refproxy", nil, false, e.refproxy, "-listen", "127.0.0.1:%PORT%", "-target", e.sinkAddr)
			},
		},
		{
			name: "docker-proxy", header: headerNone,
			start: func(e *env) (*running, error) {
				host, port, _ := net.SplitHostPort(e.sinkAddr)
				// fd 3 is the readiness pipe dockerd passes; without it
				// docker-proxy 20.10 closes whatever fd 3 happens to be.
				r, w, err := os.Pipe()
				if err != nil {
					return nil, err
				}
				defer r.Close()
				defer w.Close()
				return launch(e, "docker-proxy", []*os.File{w}, false, "/usr/sbin/docker-proxy",
					"-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", "%PORT%",
					"-container-ip", host, "-container-port", port)
			},
		},
		{
			name: "HAProxy, splice", header: headerV2,
			start: func(e *env) (*running, error) { return startHAProxy(e, true) },
		},
		{
			name: "HAProxy, no splice", header: headerV2,
			start: func(e *env) (*running, error) { return startHAProxy(e, false) },
		},
		{
			name: "socat", header: headerNone,
			skip: map[string]string{
				"idle":     "one process per connection",
				"capacity": "one process per connection",
			},
			start: func(e *env) (*running, error) {
				return launch(e, "socat", nil, false, "socat",
					"TCP-LISTEN:%PORT%,bind=127.0.0.1,reuseaddr,fork,backlog=4096", "TCP:"+e.sinkAddr)
			},
		},
		{
			name: "nginx stream", header: headerV1,
			start: startNginx,
		},
		{
			name: "bmpproxy", header: headerV2,
			start: func(e *env) (*running, error) {
				return launch(e, "bmpproxy", nil, false, e.bmpproxy,
					"--listen", "127.0.0.1:%PORT%", "--target", e.sinkAddr, "--log-level", "warn")
			},
		},
		{
			name: "bmpproxy --splice=false", header: headerV2,
			start: func(e *env) (*running, error) {
				return launch(e, "bmpproxy-copy", nil, false, e.bmpproxy,
					"--listen", "127.0.0.1:%PORT%", "--target", e.sinkAddr, "--log-level", "warn", "--splice=false")
			},
		},
		{
			name: "io.Copy reference (nobody)", header: headerV2, unpriv: true,
			start: func(e *env) (*running, error) {
				return launch(e, "refproxy-nobody", nil, true, e.refproxy, "-listen", "127.0.0.1:%PORT%", "-target", e.sinkAddr)
			},
		},
		{
			name: "bmpproxy (nobody)", header: headerV2, unpriv: true,
			start: func(e *env) (*running, error) {
				return launch(e, "bmpproxy-nobody", nil, true, e.bmpproxy,
					"--listen", "127.0.0.1:%PORT%", "--target", e.sinkAddr, "--log-level", "warn")
			},
		},
		{
			name: "bmpproxy --splice=false (nobody)", header: headerV2, unpriv: true,
			start: func(e *env) (*running, error) {
				return launch(e, "bmpproxy-copy-nobody", nil, true, e.bmpproxy,
					"--listen", "127.0.0.1:%PORT%", "--target", e.sinkAddr, "--log-level", "warn", "--splice=false")
			},
		},
	}
}

func startHAProxy(e *env, splice bool) (*running, error) {
	// HAProxy refuses to start if maxconn, and with splicing maxpipes,
	// need more fds than RLIMIT_NOFILE (2 per connection, 2 per pipe).
	opts, global := "", "    maxconn 9900\n"
	name := "haproxy-nosplice"
	if splice {
		opts = "    option splice-request\n    option splice-response\n"
		global = "    maxconn 9500\n    maxpipes 256\n"
		name = "haproxy-splice"
	}
	cfg := filepath.Join(e.dir, name+".cfg")
	conf := `global
    nbthread 1
` + global + `defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
` + opts + `frontend f
    bind 127.0.0.1:%PORT%
    default_backend b
backend b
    server s ` + e.sinkAddr + ` send-proxy-v2
`
	return launchWithConfig(e, name, cfg, conf, "haproxy", "-db", "-f", cfg)
}

func startNginx(e *env) (*running, error) {
	cfg := filepath.Join(e.dir, "nginx.conf")
	conf := `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid ` + filepath.Join(e.dir, "nginx.pid") + `;
error_log ` + filepath.Join(e.dir, "nginx-error.log") + ` warn;
events { worker_connections 19900; }
stream {
    server {
        listen 127.0.0.1:%PORT% backlog=4096;
        proxy_pass ` + e.sinkAddr + `;
        proxy_protocol on;
        proxy_half_close on;
    }
}
`
	return launchWithConfig(e, "nginx", cfg, conf, "nginx", "-c", cfg, "-e", filepath.Join(e.dir, "nginx-error.log"))
}

// launchWithConfig writes conf, with %PORT% filled in, to path and
// launches the peer.
func launchWithConfig(e *env, name, path, conf string, bin string, args ...string) (*running, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(conf, "%PORT%", strconv.Itoa(port))), 0o644); err != nil {
		return nil, err
	}
	return launchOn(e, name, port, nil, false, bin, args...)
}

// launch starts bin with args, replacing %PORT% by a free port.
func launch(e *env, name string, extra []*os.File, unpriv bool, bin string, args ...string) (*running, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return launchOn(e, name, port, extra, unpriv, bin, args...)
}

func launchOn(e *env, name string, port int, extra []*os.File, unpriv bool, bin string, args ...string) (*running, error) {
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "%PORT%", strconv.Itoa(port))
	}
	argv := append([]string{bin}, args...)
	if e.proxyCore != "" {
		argv = append([]string{"taskset", "-c", e.proxyCore}, argv...)
	}
	logPath := filepath.Join(e.dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if unpriv {
		cmd.SysProcAttr.Credential = e.nobody
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	r := &running{
		addr:    fmt.Sprintf("127.0.0.1:%d", port),
		pid:     cmd.Process.Pid, // taskset execs the command: same pid
		command: strings.Join(argv, " "),
		cmd:     cmd,
		log:     logPath,
	}
	if unpriv {
		r.command = "(as nobody) " + r.command
	}
	if err := waitAccepting(r.addr, 10*time.Second); err != nil {
		r.stop()
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%s did not start: %w\n%s", name, err, out)
	}
	return r, nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitAccepting polls addr until a connection succeeds.
func waitAccepting(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errMismatch = errors.New("sink reported a header or byte count mismatch")
