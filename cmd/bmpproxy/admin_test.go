package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
)

// httpGet is GET on a new connection: a kept-alive one may belong to a
// process that has since handed over.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample whose name and labels match, or
// -1.
func metric(body, sample string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

type routersReply struct {
	Routers []struct {
		Router          string `json:"router"`
		Listener        string `json:"listener"`
		SysName         string `json:"sys_name"`
		SysDescr        string `json:"sys_descr"`
		State           string `json:"state"`
		BytesFromRouter int64  `json:"bytes_from_router"`
		CloseReason     string `json:"close_reason"`
	} `json:"routers"`
}

// TestAdminAndBMPPrecheck runs a BMP listener with the admin listener on:
// a router's session shows in /routers with its sysName and real address,
// /metrics counts its bytes, and after it closes the entry says so. An
// HTTP request and random bytes are refused before the target sees a
// connection, and counted.
func TestAdminAndBMPPrecheck(t *testing.T) {
	accepts := make(chan struct{}, 16)
	tg := testtarget.New(t, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
		accepts <- struct{}{}
		io.Copy(io.Discard, r)
	})
	path := writeConfig(t, t.TempDir(), `
admin: "127.0.0.1:0"
listeners:
  - name: bmp
    listen: "127.0.0.1:0"
    target: "`+tg.Addr()+`"
    bmp: true
    bmp_timeout: 2s
`)
	p := start(t, 1, "--config", path)
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	proxyAddr := listenerAddrs(p)["bmp"]

	if code, body := httpGet(t, admin+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz %d %q", code, body)
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}

	// A router: Initiation with sysName edge-1, then some more messages.
	c := dialT(t, "tcp", proxyAddr)
	ini := bmp.EncodeInitiation("FRRouting 8.4 test", "edge-1")
	more := make([]byte, 100_000)
	for i := range more {
		more[i] = byte(i)
	}
	c.Write(ini)
	c.Write(more)
	sent := len(ini) + len(more)
	testtarget.Recv(t, accepts)
	var rr routersReply
	waitUntil(t, "/routers to list edge-1 with its bytes", func() bool {
		_, body := httpGet(t, admin+"/routers")
		rr = routersReply{}
		json.Unmarshal([]byte(body), &rr)
		return len(rr.Routers) == 1 && rr.Routers[0].BytesFromRouter == int64(sent)
	})
	r := rr.Routers[0]
	if r.SysName != "edge-1" || r.SysDescr != "FRRouting 8.4 test" || r.Router != c.LocalAddr().String() || r.State != "connected" || r.Listener != "bmp" {
		t.Fatalf("/routers entry %+v; want edge-1 from %s, connected", r, c.LocalAddr())
	}
	_, m := httpGet(t, admin+"/metrics")
	if v := metric(m, `bmpproxy_bytes_total{direction="from_client",listener="bmp"}`); v != float64(sent) {
		t.Fatalf("bytes from client in /metrics: %v, want %d\n%s", v, sent, m)
	}
	connected := p.waitLog(t, "router connected", 1)[0]
	if connected["sys_name"] != "edge-1" {
		t.Fatalf("router connected line %v", connected)
	}

	c.Close()
	waitUntil(t, "/routers to show the session closed", func() bool {
		_, body := httpGet(t, admin+"/routers")
		rr = routersReply{}
		json.Unmarshal([]byte(body), &rr)
		return len(rr.Routers) == 1 && rr.Routers[0].State == "closed"
	})
	if r := rr.Routers[0]; r.CloseReason != "closed" || r.SysName != "edge-1" {
		t.Fatalf("closed entry %+v", r)
	}
	if l := p.waitLog(t, "connection closed", 1)[0]; l["sys_name"] != "edge-1" {
		t.Fatalf("closing line %v", l)
	}

	// The same router again: the log says how long it was away.
	c = dialT(t, "tcp", proxyAddr)
	c.Write(ini)
	testtarget.Recv(t, accepts)
	if again := p.waitLog(t, "router connected", 2)[1]; again["since_last_session_s"] == nil {
		t.Fatalf("reconnect line %v; want since_last_session_s", again)
	}
	c.Close()

	// Not BMP: refused before the target is dialed.
	junk := [][]byte{[]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), make([]byte, 64)}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range junk[1] {
		junk[1][i] = byte(rng.UintN(256))
	}
	junk[1][0] = 0x7f // never a valid version
	for i, b := range junk {
		c := dialT(t, "tcp", proxyAddr)
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("junk %d: read %d, %v; want the connection closed", i, n, err)
		}
	}
	var refused []map[string]any
	waitUntil(t, "two refusal lines", func() bool {
		refused = refused[:0]
		for _, l := range p.logs.match("connection closed") {
			if l["reason"] == "refused" {
				refused = append(refused, l)
			}
		}
		return len(refused) == 2
	})
	for _, l := range refused {
		if !strings.Contains(fmt.Sprint(l["error"]), "not a BMP session") {
			t.Fatalf("refusal line %v", l)
		}
	}
	select {
	case <-accepts:
		t.Fatal("the target saw a connection for non-BMP bytes")
	case <-time.After(200 * time.Millisecond):
	}
	_, m = httpGet(t, admin+"/metrics")
	if v := metric(m, `bmpproxy_bmp_precheck_rejections_total{listener="bmp"}`); v != 2 {
		t.Fatalf("pre-check rejections %v, want 2", v)
	}
	if v := metric(m, `bmpproxy_connections_refused_total{listener="bmp",reason="bmp"}`); v != 2 {
		t.Fatalf("refused{reason=bmp} %v, want 2", v)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}
