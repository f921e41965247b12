// Command check verifies the interop run (test/interop/run.sh): what each
// real collector saw for each real router, against what it must see.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// The routers of run.sh.
type router struct {
	name    string // sysName it sends
	family  string
	addr    string // its real address, as bmpproxy sees it
	program string
}

var routers = []router{
	{name: "edge-r1", family: "IPv6", addr: "2001:db8:1::2", program: "FRR 8.4 bgpd"},
	{name: "GoBGP", family: "IPv4", addr: "198.51.100.130", program: "gobgpd 3.10"},
}

// proxyAddr is the address collectors on loopback see when no header
// reaches them: bmpproxy's own.
const proxyAddr = "127.0.0.1"

type options struct {
	dir, admin, mode, stage string
	tsharkPort              int

	// The resync phase.
	print          string // the part of the route plan to print
	r1, r2         string // the routers' namespaces
	rsPort         int    // the resync listener's port
	pmA, pmB, insp string // its targets
	proxyPID       int    // the resync bmpproxy, stopped at the end

	// The dial phase: FRR's two listeners, as bmpproxy dials them.
	dial6, dial4 string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "the run's work directory")
	flag.StringVar(&o.admin, "admin", "", "bmpproxy's admin address")
	flag.StringVar(&o.mode, "mode", "v2", "the proxy_protocol in force: v2 or none")
	flag.StringVar(&o.stage, "stage", "first", "wait, first, restart or none")
	flag.IntVar(&o.tsharkPort, "tshark-port", 0, "the collector port tshark captured")
	flag.StringVar(&o.print, "print", "", "with -stage plan: frr-ipv4 or frr-ipv6")
	flag.StringVar(&o.r1, "r1", "", "FRR's network namespace")
	flag.StringVar(&o.r2, "r2", "", "GoBGP's network namespace")
	flag.IntVar(&o.rsPort, "rs-port", 0, "the resync listener's port")
	flag.StringVar(&o.pmA, "pm-a", "", "the resync listener's first target: pmbmpd A, restarted")
	flag.StringVar(&o.pmB, "pm-b", "", "its second: pmbmpd B, never restarted")
	flag.StringVar(&o.insp, "inspect", "", "its third: bmpproxy inspect")
	flag.IntVar(&o.proxyPID, "proxy-pid", 0, "the resync bmpproxy's process, stopped by -stage resync-back (or the dial one, by -stage dial)")
	flag.StringVar(&o.dial6, "dial6", "", "with -stage dial: FRR's IPv6 BMP listener, [address]:port")
	flag.StringVar(&o.dial4, "dial4", "", "with -stage dial: FRR's IPv4 BMP listener, address:port")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
		os.Exit(1)
	}
}

type row struct {
	router    router
	collector string
	seen      string
	want      string
	note      string
}

func run(o options) error {
	switch o.stage {
	case "plan":
		return printPlan(os.Stdout, o.print)
	case "gobgp-load":
		return loadGoBGP(o)
	case "resync-loaded", "resync-down", "resync-back":
		return runResync(o)
	case "dial":
		return runDial(o)
	case "wait":
		return waitAll(o)
	case "restart":
		// The collector was killed and restarted: the routers must come
		// back to it on their own, through the same bmpproxy.
		if err := waitFor(2*time.Minute, "pmbmpd to see both routers again", func() bool { return len(pmbmpd(o)) == len(routers) }); err != nil {
			return err
		}
		log, _ := os.ReadFile(filepath.Join(o.dir, "bmpproxy.log"))
		if !bytes.Contains(log, []byte(`"listener":"bmp-pmacct"`)) || !bytes.Contains(log, []byte(`"reason":"target error"`)) && !bytes.Contains(log, []byte(`"reason":"dial failed"`)) {
			return fmt.Errorf("bmpproxy logged no failed session towards the killed collector:\n%s", log)
		}
	}
	var rows []row
	seen := pmbmpd(o)
	pmLog, _ := os.ReadFile(filepath.Join(o.dir, "pmbmpd.log"))
	for _, r := range routers {
		want, note := r.addr, ""
		if o.mode == "none" {
			want, note = proxyAddr, "no header: the failure bmpproxy fixes"
		} else if r.family == "IPv6" {
			// pmacct 1.7 parses only the AF_INET form of v2: it logs
			// "Unsupported family: 33" and keeps the socket's address.
			want, note = proxyAddr, "known limit: pmacct 1.7 parses v2 AF_INET only"
			if !bytes.Contains(pmLog, []byte("Unsupported family: 33")) {
				note += " (but \"Unsupported family: 33\" was not logged)"
				want = "Unsupported family: 33 in pmbmpd.log"
			}
		}
		rows = append(rows, row{r, "pmacct pmbmpd 1.7.7", seen[r.name], want, note})
	}
	if o.stage != "restart" {
		ha := haproxy(o)
		ts, err := tshark(o)
		if err != nil {
			return err
		}
		for _, r := range routers {
			if o.mode == "v2" {
				rows = append(rows, row{r, "HAProxy 2.6 accept-proxy (%ci)", ha[r.addr], r.addr, ""})
				rows = append(rows, row{r, "tshark 4.0 PROXY dissector", ts[r.addr], r.addr, ""})
			} else {
				rows = append(rows, row{r, "tshark 4.0 PROXY dissector", strings.Join(keys(ts), " "), "", "no header on the wire"})
			}
		}
	}
	rt, err := routerTable(o)
	if err != nil {
		return err
	}
	for _, r := range routers {
		rows = append(rows, row{r, "bmpproxy /routers (sysName)", rt[r.addr], r.name, ""})
	}
	return report(o, rows)
}

func report(o options, rows []row) error {
	fmt.Printf("\nmode %s, stage %s\n", o.mode, o.stage)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "router\tfamily\tcollector\tseen\texpected\tresult\t")
	failed := 0
	for _, r := range rows {
		res := "pass"
		if r.seen != r.want {
			res, failed = "FAIL", failed+1
		}
		seen := r.seen
		if seen == "" {
			seen = "-"
		}
		want := r.want
		if want == "" {
			want = "-"
		}
		if r.note != "" {
			res += " (" + r.note + ")"
		}
		fmt.Fprintf(tw, "%s (%s)\t%s\t%s\t%s\t%s\t%s\t\n", r.router.name, r.router.program, r.router.family, r.collector, seen, want, res)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(rows))
	}
	return nil
}

// waitAll waits until bmpproxy lists every router on every listener, and
// pmbmpd has logged each router's Initiation.
func waitAll(o options) error {
	// Without a header, HAProxy (accept-proxy) closes every session at
	// once, so the routers cannot stay connected on that listener.
	listeners := map[string]bool{"bmp-pmacct": true, "bmp-haproxy": o.mode != "none", "bmp-tshark": true}
	want := 0
	for _, on := range listeners {
		if on {
			want += len(routers)
		}
	}
	if err := waitFor(2*time.Minute, "both routers on every listener in /routers", func() bool {
		n := 0
		for _, e := range routersJSON(o) {
			if e.State == "connected" && e.SysName != "" && listeners[e.Listener] {
				n++
			}
		}
		return n >= want
	}); err != nil {
		return err
	}
	return waitFor(time.Minute, "pmbmpd to log both Initiations", func() bool { return len(pmbmpd(o)) == len(routers) })
}

func waitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return nil
}

type routerEntry struct {
	Router   string `json:"router"`
	Listener string `json:"listener"`
	SysName  string `json:"sys_name"`
	State    string `json:"state"`
}

func routersJSON(o options) []routerEntry {
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + o.admin + "/routers")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v struct{ Routers []routerEntry }
	json.NewDecoder(resp.Body).Decode(&v)
	return v.Routers
}

// routerTable maps each connected router's address to its sysName, from
// /routers.
func routerTable(o options) (map[string]string, error) {
	out := map[string]string{}
	for _, e := range routersJSON(o) {
		if e.State != "connected" {
			continue
		}
		host := e.Router[:strings.LastIndex(e.Router, ":")]
		out[strings.Trim(host, "[]")] = e.SysName
	}
	return out, nil
}

// pmbmpd maps sysName to the bmp_router pmbmpd recorded with the
// router's Initiation message.
func pmbmpd(o options) map[string]string {
	out := map[string]string{}
	f, err := os.Open(filepath.Join(o.dir, "pmbmpd.json"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		name, _ := m["bmp_init_info_sysname"].(string)
		if name == "" {
			continue
		}
		addr, _ := m["bmp_router"].(string)
		out[name] = addr
	}
	return out
}

// haproxy returns the client addresses HAProxy logged from the headers it
// parsed ("client %ci %cp").
func haproxy(o options) map[string]string {
	out := map[string]string{}
	b, _ := os.ReadFile(filepath.Join(o.dir, "haproxy.log"))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "client" {
			out[f[1]] = f[1]
		}
	}
	return out
}

// tshark decodes the capture between bmpproxy and one collector and
// returns the source addresses of the PROXY headers in it.
func tshark(o options) (map[string]string, error) {
	// Wireshark finds PROXY headers with its heuristic TCP dissector.
	cmd := exec.Command("tshark", "-r", filepath.Join(o.dir, "proxy.pcapng"),
		"-Y", fmt.Sprintf("proxy && tcp.dstport == %d", o.tsharkPort),
		"-T", "fields", "-e", "proxy.src.ipv4", "-e", "proxy.src.ipv6")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark: %v: %s", err, stderr.Bytes())
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		for _, a := range strings.Fields(line) {
			m[a] = a
		}
	}
	return m, nil
}

func keys(m map[string]string) []string {
	var k []string
	for a := range m {
		k = append(k, a)
	}
	return k
}
