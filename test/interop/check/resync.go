package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The resync phase (run.sh's phase_resync): a bmpproxy listener with
// resync and three targets (pmbmpd A, the primary; pmbmpd B; an
// inspect), FRR and GoBGP connected to it with thousands of routes. A is
// killed, routes change while it is down, A is restarted, routes change
// again; then the routers' sessions must be the very ones they opened,
// and A's state (rebuilt from what it logged since its restart) must
// equal B's (which never restarted) and hold every change.
//
// Stages: resync-loaded (the routes are in; the sessions' identities are
// saved), resync-down (after A was killed: the leg's end is seen, the
// outage churn is applied and reaches B), resync-back (after A's
// restart: the reconnect and the replay, the live churn, the
// comparisons, then bmpproxy is stopped for inspect's records; prints
// the table).

const resyncListener = "bmp-resync"

type bmpRouter struct{ addr, name, program string }

// resyncRouters are the routers on the resync listener, by the address
// they send BMP from.
func resyncRouters() []bmpRouter {
	return []bmpRouter{{frrBMP, "edge-r1", "FRR 8.4 bgpd"}, {gobgpBMP, "GoBGP", "gobgpd 3.10"}}
}

// identity is what names each router's BMP session, taken before A is
// killed and again at the end.
type identity struct {
	Taken   time.Time                  `json:"taken"`
	Routers map[string]sessionIdentity `json:"routers"` // by router address
}

type sessionIdentity struct {
	Router   string    `json:"router"` // address:port, as /routers lists it
	Since    time.Time `json:"since"`
	Conns    []uint64  `json:"conns"`     // conn of bmpproxy's "router connected" lines
	Tuple    string    `json:"tuple"`     // the router's socket, from ss in its namespace
	LegSince []string  `json:"leg_since"` // each leg's connected_since
	LegState []string  `json:"leg_state"` // and state
	FRRUp    int       `json:"frr_up"`    // FRR's `show bmp` uptime of its resync connection, in seconds
}

func runResync(o options) error {
	switch o.stage {
	case "resync-loaded":
		return resyncLoaded(o)
	case "resync-down":
		return resyncDown(o)
	case "resync-back":
		return resyncBack(o)
	}
	return fmt.Errorf("unknown stage %q", o.stage)
}

func (o options) path(name string) string { return filepath.Join(o.dir, name) }

// resyncLoaded waits until both routers are on the listener with every
// leg live, and both pmbmpd hold the routers' initial routes; then it
// saves the sessions' identities.
func resyncLoaded(o options) error {
	want := expected()
	var last string
	err := waitFor(90*time.Second, "both routers' routes at bmpproxy and both pmbmpd", func() bool {
		rs := resyncRoutersJSON(o)
		if len(rs) != len(resyncRouters()) {
			last = fmt.Sprintf("%d routers on %s", len(rs), resyncListener)
			return false
		}
		for _, r := range rs {
			for _, l := range r.Legs {
				if l.State != "live" {
					last = fmt.Sprintf("%s: leg %s is %s", r.Router, l.Target, l.State)
					return false
				}
			}
		}
		for _, name := range []string{"pmbmpd-a.json", "pmbmpd-b.json"} {
			s, err := readMsglog(o.path(name))
			if err != nil {
				last = err.Error()
				return false
			}
			if ok, d := s.meets(want); !ok {
				last = fmt.Sprintf("%s: %d differences, first %s", name, len(d), d[0])
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	id, err := takeIdentity(o)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(id, "", "  ")
	if err := os.WriteFile(o.path("resync-identity.json"), b, 0o644); err != nil {
		return err
	}
	s, _ := readMsglog(o.path("pmbmpd-b.json"))
	fmt.Printf("routes in: pmbmpd A and B hold %d routes of %s and %d of %s\n",
		s.routeCount(frrBMP), frrBMP, s.routeCount(gobgpBMP), gobgpBMP)
	return nil
}

// resyncDown runs while pmbmpd A is down: it waits for bmpproxy to see
// the leg end, changes routes, and waits until pmbmpd B and bmpproxy's
// kept state have the changes, which A must then get by replay.
func resyncDown(o options) error {
	if err := waitFor(30*time.Second, "bmpproxy to log the end of both routers' leg to pmbmpd A", func() bool {
		return len(legClosed(o, o.pmA)) >= len(resyncRouters())
	}); err != nil {
		return err
	}
	if err := applyChurn(o, "outage"); err != nil {
		return err
	}
	return waitChurn(o, "outage")
}

// waitChurn waits until pmbmpd B holds the routes after steps, and
// bmpproxy keeps as many routes per router as B holds.
func waitChurn(o options, steps ...string) error {
	want := expected(steps...)
	var last string
	err := waitFor(60*time.Second, fmt.Sprintf("the %s changes at pmbmpd B and in bmpproxy's state", strings.Join(steps, " and ")), func() bool {
		s, err := readMsglog(o.path("pmbmpd-b.json"))
		if err != nil {
			last = err.Error()
			return false
		}
		if ok, d := s.meets(want); !ok {
			last = fmt.Sprintf("%d differences, first %s", len(d), d[0])
			return false
		}
		for _, r := range resyncRoutersJSON(o) {
			if r.Resync == nil || r.Resync.Routes != s.routeCount(hostOf(r.Router)) {
				last = fmt.Sprintf("%s: bmpproxy keeps %v routes, pmbmpd B holds %d", r.Router, r.Resync, s.routeCount(hostOf(r.Router)))
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// resyncBack runs once pmbmpd A is started again.
func resyncBack(o options) error {
	var before identity
	b, err := os.ReadFile(o.path("resync-identity.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &before); err != nil {
		return err
	}
	n := float64(len(resyncRouters()))
	if err := waitFor(60*time.Second, "bmpproxy to reconnect and replay both routers' leg to pmbmpd A", func() bool {
		m := resyncMetrics(o)
		if m.get("leg_replays_total", o.pmA) < n || m.get("legs_up", o.pmA) < n {
			return false
		}
		for _, r := range resyncRoutersJSON(o) {
			if len(r.Legs) == 0 || r.Legs[0].State != "live" {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	if err := applyChurn(o, "live"); err != nil {
		return err
	}
	if err := waitChurn(o, "outage", "live"); err != nil {
		return err
	}
	// B has every change; A must come to hold exactly what B holds. If
	// it does not in time, the table says how they differ.
	var a, bs *bmpState
	var diffs []string
	equal := false
	var readErr error
	waitFor(30*time.Second, "pmbmpd A to hold what pmbmpd B holds", func() bool {
		if a, readErr = readMsglog(o.path("pmbmpd-a.json")); readErr != nil {
			return false
		}
		if bs, readErr = readMsglog(o.path("pmbmpd-b.json")); readErr != nil {
			return false
		}
		equal, diffs = diffStates(a, bs, 10)
		return equal
	})
	if readErr != nil {
		return readErr
	}
	after, err := takeIdentity(o)
	if err != nil {
		return err
	}
	t := &table{}
	checkSessions(o, t, before, after)
	checkLegs(o, t, before, after)
	checkStates(o, t, a, bs, equal, diffs)
	if err := stopProxy(o); err != nil {
		return err
	}
	checkStopped(o, t, bs)
	return t.print()
}

// table is the phase's report: one row per check.
type table struct{ rows [][5]string }

func (t *table) add(check, subject, seen, want string, ok bool, note string) {
	res := "pass"
	if !ok {
		res = "FAIL"
	}
	if note != "" {
		res += " (" + note + ")"
	}
	t.rows = append(t.rows, [5]string{check, subject, seen, want, res})
}

func (t *table) print() error {
	fmt.Println("\nresync: pmbmpd A killed and restarted behind one bmpproxy listener (resync; targets A, B, inspect)")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "check\trouter\tseen\texpected\tresult\t")
	failed := 0
	for _, r := range t.rows {
		if strings.HasPrefix(r[4], "FAIL") {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r[0], r[1], r[2], r[3], r[4])
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("resync: %d of %d checks failed", failed, len(t.rows))
	}
	return nil
}

func routerLabel(addr string) string {
	for _, r := range resyncRouters() {
		if r.addr == addr {
			return fmt.Sprintf("%s (%s)", r.name, r.program)
		}
	}
	return addr
}

// checkSessions: each router's session is the one it opened before A
// was killed, by bmpproxy's account and by the router's.
func checkSessions(o options, t *table, before, after identity) {
	closed := logLines(o, func(m map[string]any) bool {
		return m["message"] == "connection closed" && m["listener"] == resyncListener
	})
	for _, r := range resyncRouters() {
		b, a := before.Routers[r.addr], after.Routers[r.addr]
		who := routerLabel(r.addr)
		show := func(s sessionIdentity) string {
			return fmt.Sprintf("conn %v, %s since %s", s.Conns, s.Router, s.Since.Format(time.TimeOnly))
		}
		// One "router connected" line, no "connection closed" line.
		t.add("bmpproxy: conn (log), router and since (/routers)", who, show(a), show(b)+" (before the kill)",
			len(a.Conns) == 1 && show(a) == show(b) && len(closed) == 0, fmt.Sprintf("%d connection closed lines", len(closed)))
		seen, want, ok := a.Tuple, b.Tuple, a.Tuple != "" && a.Tuple == b.Tuple
		if r.addr == frrBMP {
			// Up for at least as long as the test ran since: the same
			// connection.
			min := b.FRRUp + int(after.Taken.Sub(before.Taken).Seconds()) - 1
			seen += fmt.Sprintf(", up %ds", a.FRRUp)
			want += fmt.Sprintf(", up ≥ %ds", min)
			ok = ok && a.FRRUp >= min
		}
		note := "ss in its namespace"
		if r.addr == frrBMP {
			note += "; FRR's show bmp"
		}
		t.add("router: its BMP socket", who, seen, want, ok, note)
	}
}

// checkLegs: bmpproxy saw A's leg end, dialed it again and replayed; the
// other legs were never touched.
func checkLegs(o options, t *table, before, after identity) {
	for _, r := range resyncRouters() {
		a := after.Routers[r.addr]
		var reasons []string
		for _, m := range logLines(o, func(m map[string]any) bool {
			return m["message"] == "leg closed" && m["listener"] == resyncListener && m["target"] == o.pmA &&
				hostOf(fmt.Sprint(m["client"])) == r.addr
		}) {
			reasons = append(reasons, fmt.Sprint(m["reason"]))
		}
		since, _ := time.Parse(time.RFC3339Nano, a.LegSince[0])
		t.add("bmpproxy: leg to A closed (log), then live (/routers)", routerLabel(r.addr),
			fmt.Sprintf("%s; %s since %s", strings.Join(reasons, ", "), a.LegState[0], since.Format(time.TimeOnly)),
			"collector error; live since after "+before.Taken.Format(time.TimeOnly),
			len(reasons) == 1 && reasons[0] == "collector error" && a.LegState[0] == "live" && since.After(before.Taken), "")
	}
	m := resyncMetrics(o)
	n := float64(len(resyncRouters()))
	retries := logLines(o, func(m map[string]any) bool {
		return m["message"] == "leg not connected; retrying with backoff" && m["target"] == o.pmA
	})
	secs := m.get("leg_replay_seconds_total", o.pmA)
	t.add("metrics, A: reconnects, replays, legs up", "both",
		fmt.Sprintf("%g, %g, %g", m.get("leg_reconnects_total", o.pmA), m.get("leg_replays_total", o.pmA), m.get("legs_up", o.pmA)),
		fmt.Sprintf("%g, %g, %g", n, n, n),
		m.get("leg_reconnects_total", o.pmA) == n && m.get("leg_replays_total", o.pmA) == n && m.get("legs_up", o.pmA) == n && secs > 0,
		fmt.Sprintf("replays took %.1f ms; %g failed dials, %d logged", secs*1000, m.get("leg_dial_failures_total", o.pmA), len(retries)))
	var seen []string
	ok := true
	for _, target := range []string{o.pmB, o.insp} {
		var vs []string
		for _, metric := range []string{"leg_reconnects_total", "leg_replays_total", "leg_dial_failures_total", "leg_cuts_total"} {
			v := m.get(metric, target)
			ok = ok && v == 0
			vs = append(vs, fmt.Sprint(v))
		}
		up := m.get("legs_up", target)
		ok = ok && up == n
		seen = append(seen, strings.Join(vs, " ")+fmt.Sprintf(", %g up", up))
	}
	for _, r := range resyncRouters() {
		b, a := before.Routers[r.addr], after.Routers[r.addr]
		ok = ok && a.LegSince[1] == b.LegSince[1] && a.LegSince[2] == b.LegSince[2]
	}
	t.add("metrics, B | inspect: reconnects replays dial-failures cuts", "both", strings.Join(seen, " | "),
		fmt.Sprintf("0 0 0 0, %g up | 0 0 0 0, %g up", n, n), ok, "and their connected_since unchanged")
}

// checkStates: A's state since its restart equals B's, holds every
// change, and matches bmpproxy's count.
func checkStates(o options, t *table, a, b *bmpState, equal bool, diffs []string) {
	note := "Initiations, Peer Ups, routes with every attribute"
	if !equal {
		note = strings.Join(diffs, "; ")
	}
	t.add("pmbmpd A (restarted) = pmbmpd B", "both", fmt.Sprintf("%d routes, %d peers", len(a.routes), len(a.peers)),
		fmt.Sprintf("%d routes, %d peers", len(b.routes), len(b.peers)), equal && len(a.routes) > 0 && len(a.peers) > 0, note)
	rs := resyncRoutersJSON(o)
	for _, r := range resyncRouters() {
		kept := -1
		for _, e := range rs {
			if hostOf(e.Router) == r.addr && e.Resync != nil {
				kept = e.Resync.Routes
			}
		}
		na, nb := a.routeCount(r.addr), b.routeCount(r.addr)
		t.add("routes: at A, at B, kept by bmpproxy (/routers)", routerLabel(r.addr), fmt.Sprintf("%d %d %d", na, nb, kept),
			"equal, > 0", na > 0 && na == nb && kept == nb, "")
	}
	short := func(d []string) string { return strings.Join(d[:min(len(d), 5)], "; ") }
	want := expected("outage", "live")
	okPlan, dPlan := a.meets(want)
	okOut, dOut := meetsChanges(a, "outage", "live")
	okLive, dLive := meetsChanges(a, "live")
	t.add("A holds the plan; the outage's changes; the live ones", "both",
		fmt.Sprintf("%d; %d; %d differences", len(dPlan), len(dOut), len(dLive)),
		fmt.Sprintf("%d prefixes; %d; %d changes", len(want[frrBMP])+len(want[gobgpBMP]), len(churn("outage")), len(churn("live"))),
		okPlan && okOut && okLive, short(append(append(dPlan, dOut...), dLive...)))
	pmLog, _ := os.ReadFile(o.path("pmbmpd-a.log"))
	var bad []string
	for _, l := range strings.Split(string(pmLog), "\n") {
		if strings.Contains(l, "ERROR") || strings.Contains(l, "WARN") {
			bad = append(bad, l)
		}
	}
	t.add("pmbmpd A's log: errors and warnings", "both", strconv.Itoa(len(bad)), "0", len(bad) == 0, short(bad))
}

// meetsChanges checks s against step's own changes, but for those that
// a later step changes again.
func meetsChanges(s *bmpState, step string, later ...string) (bool, []string) {
	touched := map[netip.Prefix]bool{}
	for _, l := range later {
		for _, c := range churn(l) {
			touched[c.prefix] = true
		}
	}
	full := expected(append([]string{step}, later...)...)
	want := map[string]map[netip.Prefix]int{frrBMP: {}, gobgpBMP: {}}
	for _, c := range churn(step) {
		if touched[c.prefix] {
			continue
		}
		at := receiver(c)
		want[at][c.prefix] = full[at][c.prefix]
	}
	return s.meets(want)
}

// inspectRecord is the part of `bmpproxy inspect --json`'s record the
// phase reads.
type inspectRecord struct {
	Src      string `json:"src"`
	Bytes    int64  `json:"bytes"`
	BMPError string `json:"bmp_error"`
	BMPTypes []struct {
		Type  string `json:"type"`
		Count int64  `json:"count"`
	} `json:"bmp_types"`
}

// checkStopped, once bmpproxy stopped: pmbmpd B and the inspect leg,
// which never restarted, saw one Initiation per router, inspect in one
// connection with every byte the router sent; each router session had
// its closing line.
func checkStopped(o options, t *table, b *bmpState) {
	var recs []inspectRecord
	waitFor(15*time.Second, "inspect's records", func() bool {
		recs = readRecords[inspectRecord](o.path("inspect-resync.json"))
		return len(recs) >= len(resyncRouters())
	})
	legBytes := map[string][]int64{} // by router: B's and inspect's legs
	for _, m := range logLines(o, func(m map[string]any) bool {
		return m["message"] == "leg closed" && m["listener"] == resyncListener && (m["target"] == o.pmB || m["target"] == o.insp)
	}) {
		n, _ := m["bytes_to_collector"].(float64)
		h := hostOf(fmt.Sprint(m["client"]))
		legBytes[h] = append(legBytes[h], int64(n))
	}
	closed := map[string]int{}
	for _, m := range logLines(o, func(m map[string]any) bool {
		return m["message"] == "connection closed" && m["listener"] == resyncListener
	}) {
		closed[hostOf(fmt.Sprint(m["client"]))]++
	}
	for _, r := range resyncRouters() {
		conns, inits, rm := 0, int64(0), int64(0)
		var n int64
		bmpErr := ""
		for _, rec := range recs {
			if hostOf(rec.Src) != r.addr {
				continue
			}
			conns++
			n += rec.Bytes
			bmpErr += rec.BMPError
			for _, tc := range rec.BMPTypes {
				switch tc.Type {
				case "initiation":
					inits += tc.Count
				case "route-monitoring":
					rm += tc.Count
				}
			}
		}
		who := routerLabel(r.addr)
		t.add("Initiations from the router: at B; at inspect (conns)", who, fmt.Sprintf("%d; %d (%d)", b.initCount[r.addr], inits, conns), "1; 1 (1)",
			b.initCount[r.addr] == 1 && inits == 1 && conns == 1 && bmpErr == "", bmpErr)
		// Each leg's closing line counts its PROXY header (v2, IPv4:
		// 28 bytes) and every byte of the router's; inspect counts the
		// latter.
		lb := legBytes[r.addr]
		t.add("inspect's bytes + 28 = legs B, inspect (log)", who, fmt.Sprintf("%d+28", n), fmt.Sprint(lb),
			n > 0 && rm > 0 && len(lb) == 2 && lb[0] == n+28 && lb[1] == n+28, fmt.Sprintf("%d Route Monitoring", rm))
		t.add("bmpproxy: \"connection closed\" at its stop", who, strconv.Itoa(closed[r.addr]), "1", closed[r.addr] == 1,
			"every connection ends with one log line")
	}
}

// stopProxy stops the resync bmpproxy (drain_timeout 0s), which ends
// every leg, so that inspect writes its records; it returns once
// bmpproxy logged that it stopped.
func stopProxy(o options) error {
	if o.proxyPID <= 0 {
		return fmt.Errorf("-proxy-pid: need the resync bmpproxy's pid")
	}
	if err := syscall.Kill(o.proxyPID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping bmpproxy %d: %w", o.proxyPID, err)
	}
	return waitFor(15*time.Second, "bmpproxy to log that it stopped", func() bool {
		return len(logLines(o, func(m map[string]any) bool { return m["message"] == "stopped" })) > 0
	})
}

// hostOf is addr:port's address, without brackets.
func hostOf(addrPort string) string {
	i := strings.LastIndex(addrPort, ":")
	if i < 0 {
		return addrPort
	}
	return strings.Trim(addrPort[:i], "[]")
}

// takeIdentity reads what names each router's session now.
func takeIdentity(o options) (identity, error) {
	id := identity{Taken: time.Now(), Routers: map[string]sessionIdentity{}}
	conns := map[string][]uint64{}
	for _, m := range logLines(o, func(m map[string]any) bool {
		return m["message"] == "router connected" && m["listener"] == resyncListener
	}) {
		c, _ := m["conn"].(float64)
		h := hostOf(fmt.Sprint(m["client"]))
		conns[h] = append(conns[h], uint64(c))
	}
	for _, e := range resyncRoutersJSON(o) {
		h := hostOf(e.Router)
		si := sessionIdentity{Router: e.Router, Since: e.Since, Conns: conns[h]}
		for _, l := range e.Legs {
			si.LegSince = append(si.LegSince, l.Since)
			si.LegState = append(si.LegState, l.State)
		}
		if len(e.Legs) != 3 {
			return id, fmt.Errorf("/routers: %s has %d legs, want 3", e.Router, len(e.Legs))
		}
		id.Routers[h] = si
	}
	for ns, addr := range map[string]string{o.r1: frrBMP, o.r2: gobgpBMP} {
		out, err := exec.Command("ip", "netns", "exec", ns, "ss", "-tnH", "state", "established",
			fmt.Sprintf("( dport = :%d )", o.rsPort)).Output()
		if err != nil {
			return id, fmt.Errorf("ss in %s: %w", ns, err)
		}
		var tuples []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(l); len(f) >= 4 {
				tuples = append(tuples, f[2]+" → "+f[3])
			}
		}
		si := id.Routers[addr]
		si.Tuple = strings.Join(tuples, ", ")
		id.Routers[addr] = si
	}
	up, err := frrResyncUptime(o)
	if err != nil {
		return id, err
	}
	si := id.Routers[frrBMP]
	si.FRRUp = up
	id.Routers[frrBMP] = si
	return id, nil
}

// frrResyncUptime reads, from FRR's `show bmp`, how long its one
// connection of the "resync" targets has been up.
func frrResyncUptime(o options) (int, error) {
	out, err := exec.Command("vtysh", "--vty_socket", o.path("frr"), "-d", "bgpd", "-c", "show bmp").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("vtysh show bmp: %w: %s", err, out)
	}
	_, section, ok := strings.Cut(string(out), `Targets "resync"`)
	if !ok {
		return 0, fmt.Errorf("show bmp: no resync targets:\n%s", out)
	}
	_, clients, ok := strings.Cut(section, "connected clients:")
	if !ok {
		return 0, fmt.Errorf("show bmp: the resync targets have no connected client:\n%s", out)
	}
	re := regexp.MustCompile(`(?m)^\s*\S+:\d+\s+(\d+):(\d+):(\d+)\s`)
	m := re.FindStringSubmatch(clients)
	if m == nil {
		return 0, fmt.Errorf("show bmp: no uptime in:\n%s", clients)
	}
	h, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	s, _ := strconv.Atoi(m[3])
	return h*3600 + mi*60 + s, nil
}

// logLines returns the resync bmpproxy's log lines that match.
func logLines(o options, match func(map[string]any) bool) []map[string]any {
	f, err := os.Open(o.path("resync.log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && match(m) {
			out = append(out, m)
		}
	}
	return out
}

// legClosed returns the reason of each "leg closed" line of target.
func legClosed(o options, target string) []string {
	var out []string
	for _, m := range logLines(o, func(m map[string]any) bool {
		return m["message"] == "leg closed" && m["listener"] == resyncListener && m["target"] == target
	}) {
		out = append(out, fmt.Sprintf("%v: %v", m["reason"], m["error"]))
	}
	return out
}

type resyncRouter struct {
	Router string    `json:"router"`
	Since  time.Time `json:"connected_since"`
	State  string    `json:"state"`
	Legs   []struct {
		Target string `json:"target"`
		State  string `json:"state"`
		Since  string `json:"connected_since"`
	} `json:"legs"`
	Resync *struct {
		State  string `json:"state"`
		Routes int    `json:"routes"`
	} `json:"resync"`
	Listener string `json:"listener"`
}

// resyncRoutersJSON lists the connected routers of the resync listener.
func resyncRoutersJSON(o options) []resyncRouter {
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + o.admin + "/routers")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v struct{ Routers []resyncRouter }
	json.NewDecoder(resp.Body).Decode(&v)
	var out []resyncRouter
	for _, r := range v.Routers {
		if r.Listener == resyncListener && r.State == "connected" {
			out = append(out, r)
		}
	}
	return out
}

// metrics is one scrape of /metrics: name{labels} → value.
type metrics map[string]float64

func resyncMetrics(o options) metrics {
	m := metrics{}
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + o.admin + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndex(l, " ")
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			m[l[:i]] = v
		}
	}
	return m
}

// get is the value of bmpproxy_name for the resync listener and target.
func (m metrics) get(name, target string) float64 {
	return m[fmt.Sprintf("bmpproxy_%s{listener=%q,target=%q}", name, resyncListener, target)]
}

// readRecords reads what bmpproxy inspect --json wrote to path so far:
// one JSON object per connection, up to the first that does not decode
// (a line still being written).
func readRecords[T any](path string) []T {
	raw, _ := os.ReadFile(path)
	d := json.NewDecoder(bytes.NewReader(raw))
	var recs []T
	for {
		var r T
		if d.Decode(&r) != nil {
			return recs
		}
		recs = append(recs, r)
	}
}
