package main

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestInspectThroughProxy runs the real proxy in front of the real
// inspector and replays captured router Initiations over IPv6 and IPv4: the
// inspector must report the routers' own addresses from the header, their
// sysName and sysDescr, and every byte, for each header mode.
func TestInspectThroughProxy(t *testing.T) {
	frr, err := os.ReadFile("../../bmp/testdata/frr-8.4-bmp-initiation.bin")
	if err != nil {
		t.Fatal(err)
	}
	gobgp, err := os.ReadFile("../../bmp/testdata/gobgp-3.10-bmp-initiation.bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"v2", "v1", "none"} {
		t.Run(mode, func(t *testing.T) {
			ins := start(t, 1, "inspect", "--listen", "127.0.0.1:0", "--json")
			p := start(t, 1, "--listen", "[::]:0", "--target", ins.addr(0), "--proxy-protocol", mode)

			routers := []struct {
				network, host string
				capture       []byte
				sysName       string
				sysDescr      string
				types         string
				family        string
			}{
				{"tcp6", "::1", frr, "edge-r1", "FRRouting 8.4.4", "initiation:1,peer-down:1", "TCP6"},
				{"tcp4", "127.0.0.1", gobgp, "GoBGP", "3.10.0", "initiation:1", "TCP4"},
			}
			for i, r := range routers {
				c := dialT(t, r.network, net.JoinHostPort(r.host, fmt.Sprint(p.port(0))))
				src := c.LocalAddr().String()
				c.Write(r.capture)
				c.CloseWrite()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				c.Read(make([]byte, 1)) // EOF once the inspector has closed
				waitfor.Within(t, binaryWait, "the inspector's record", func() bool { return len(ins.out.all()) > i })
				rec := ins.out.all()[i]
				types := ""
				for j, tc := range rec["bmp_types"].([]any) {
					m := tc.(map[string]any)
					if j > 0 {
						types += ","
					}
					types += fmt.Sprintf("%s:%v", m["type"], m["count"])
				}
				wantProxy, wantSrc, wantFamily := mode, src, r.family
				if mode == "none" {
					wantSrc, wantFamily = "", ""
				}
				if rec["proxy"] != wantProxy || rec["src"] != wantSrc || rec["family"] != wantFamily ||
					rec["bytes"] != float64(len(r.capture)) || rec["sys_name"] != r.sysName ||
					rec["sys_descr"] != r.sysDescr || types != r.types || rec["error"] != "" || rec["bmp_error"] != "" {
					t.Errorf("router %s: record %v", src, rec)
				}
			}
		})
	}
}
