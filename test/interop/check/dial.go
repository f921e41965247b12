package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The dial phase (run.sh's phase_dial): FRR's bgpd waits to be dialed
// (bmp listener, a passive BMP station) on an IPv6 and an IPv4 address,
// and a bmpproxy with a dial listener connects to both and sends each
// session to an inspect. Stage dial waits for both sessions in /routers,
// reads /metrics, stops bmpproxy (drain_timeout 0s) so that inspect
// writes its records, and checks that each record's PROXY v2 header
// names the router's listening address and port as its source.

const dialListener = "bmp-dial"

// dialRecord is the part of `bmpproxy inspect --json`'s record the phase
// reads.
type dialRecord struct {
	Proxy    string `json:"proxy"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	SysName  string `json:"sys_name"`
	BMPError string `json:"bmp_error"`
	BMPTypes []struct {
		Type  string `json:"type"`
		Count int64  `json:"count"`
	} `json:"bmp_types"`
}

func runDial(o options) error {
	routers := []string{o.dial6, o.dial4}
	if o.dial6 == "" || o.dial4 == "" || o.proxyPID <= 0 {
		return fmt.Errorf("-stage dial needs -dial6, -dial4 and -proxy-pid")
	}
	var rows [][5]string
	add := func(check, subject, seen, want string, ok bool, note string) {
		res := "pass"
		if !ok {
			res = "FAIL"
		}
		if note != "" {
			res += " (" + note + ")"
		}
		rows = append(rows, [5]string{check, subject, seen, want, res})
	}

	sysNames := map[string]string{}
	err := waitFor(2*time.Minute, "both of FRR's listeners dialed, in /routers", func() bool {
		for _, e := range routersJSON(o) {
			if e.Listener == dialListener && e.State == "connected" && e.SysName != "" {
				sysNames[e.Router] = e.SysName
			}
		}
		return sysNames[o.dial6] != "" && sysNames[o.dial4] != ""
	})
	for _, r := range routers {
		add("bmpproxy /routers (sysName)", r, sysNames[r], "edge-r1", sysNames[r] == "edge-r1", "")
	}
	if err != nil {
		return printDial(rows, err)
	}
	m := resyncMetrics(o)
	dials := m[fmt.Sprintf("bmpproxy_router_dials_total{listener=%q}", dialListener)]
	add("bmpproxy_router_dials_total", dialListener, fmt.Sprint(dials), "2", dials == 2, "one dial per router")

	if err := syscall.Kill(o.proxyPID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping bmpproxy %d: %w", o.proxyPID, err)
	}
	var recs []dialRecord
	waitFor(15*time.Second, "inspect's records", func() bool {
		recs = readRecords[dialRecord](o.path("inspect-dial.json"))
		return len(recs) >= len(routers)
	})
	closed := map[string]int{}
	dialing := 0
	f, _ := os.Open(o.path("dial.log"))
	if f != nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) != nil || l["listener"] != dialListener {
				continue
			}
			switch l["message"] {
			case "connection closed":
				closed[fmt.Sprint(l["client"])]++
			case "dialing a router that waits to be dialed":
				dialing++
			}
		}
		f.Close()
	}
	add("bmpproxy: \"dialing a router that waits to be dialed\"", dialListener, strconv.Itoa(dialing), "2", dialing == 2, "")
	for _, r := range routers {
		n, inits, rm := 0, int64(0), int64(0)
		var proxy, dst, name, bmpErr string
		for _, rec := range recs {
			if rec.Src != r {
				continue
			}
			n++
			proxy, dst, name, bmpErr = rec.Proxy, rec.Dst, rec.SysName, bmpErr+rec.BMPError
			for _, tc := range rec.BMPTypes {
				switch tc.Type {
				case "initiation":
					inits += tc.Count
				case "route-monitoring":
					rm += tc.Count
				}
			}
		}
		add("inspect: sessions with the router's address:port as PROXY v2 source", r, fmt.Sprintf("%d %s", n, proxy), "1 v2",
			n == 1 && proxy == "v2", "destination "+dst)
		add("inspect: sysName; Initiations; Route Monitoring > 0", r, fmt.Sprintf("%s; %d; %d", name, inits, rm), "edge-r1; 1; >0",
			name == "edge-r1" && inits == 1 && rm > 0 && bmpErr == "", bmpErr)
		add("bmpproxy: \"connection closed\" at its stop", r, strconv.Itoa(closed[r]), "1", closed[r] == 1,
			"every connection ends with one log line")
	}
	return printDial(rows, nil)
}

func printDial(rows [][5]string, err error) error {
	fmt.Println("\ndial: FRR waits to be dialed (bmp listener); bmpproxy dials it over IPv6 and IPv4")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "check\trouter\tseen\texpected\tresult\t")
	failed := 0
	for _, r := range rows {
		if strings.HasPrefix(r[4], "FAIL") {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r[0], r[1], r[2], r[3], r[4])
	}
	tw.Flush()
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("dial: %d of %d checks failed", failed, len(rows))
	}
	return nil
}
