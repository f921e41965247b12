package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
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
	waitfor.Within(t, binaryWait, "/routers to list edge-1 with its bytes", func() bool {
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
	waitfor.Within(t, binaryWait, "/routers to show the session closed", func() bool {
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
	waitfor.Within(t, binaryWait, "two refusal lines", func() bool {
		refused = refused[:0]
		for _, l := range p.logs.match("connection closed") {
			if l["reason"] == "refused" {
				refused = append(refused, l)
			}
		}
		return len(refused) == 2
	})
	// Each refusal line is written after the decision, and names the
	// upstream connection if there was one: none was dialed.
	for _, l := range refused {
		if !strings.Contains(fmt.Sprint(l["error"]), "not a BMP session") || l["upstream"] != "" {
			t.Fatalf("refusal line %v; want not a BMP session, refused before a dial", l)
		}
	}
	select {
	case <-accepts:
		t.Fatal("the target saw a connection for non-BMP bytes")
	default:
	}
	_, m = httpGet(t, admin+"/metrics")
	if v := metric(m, `bmpproxy_connections_refused_total{listener="bmp",reason="bmp"}`); v != 2 {
		t.Fatalf("refused{reason=bmp} %v, want 2", v)
	}
	// One metric per thing: the refusal is not counted twice.
	if strings.Contains(m, "bmpproxy_bmp_precheck_rejections_total") || strings.Contains(m, "bmpproxy_proxy_header_errors_total") {
		t.Fatalf("/metrics repeats connections_refused_total under another name:\n%s", m)
	}
	p.stop(t, syscall.SIGTERM, 10*time.Second)
}

// TestAdminTokenBinary runs the real binary with its admin listener on
// [::] and admin_token_file set: GET /metrics needs no token, while POST
// /upgrade answers 401 without one and 403 with a wrong one, and with the
// right one runs the upgrade. The upgrade fails here, since the binary is
// gone from its path; the process serves on. "bmpproxy upgrade --admin"
// sends the token of --token-file or BMPPROXY_ADMIN_TOKEN_FILE. SIGHUP
// reads the token file again; a token file that no longer passes the
// checks fails the reload and the old token stays.
func TestAdminTokenBinary(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "bmpproxy")
	install(t, binPath(), exe)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("e2e-token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := testtarget.New(t, testtarget.V2, nil)
	path := writeConfig(t, dir, `
admin: "[::]:0"
admin_token_file: "`+tokenFile+`"
listeners:
  - listen: "127.0.0.1:0"
    target: "`+tg.Addr()+`"
`)
	cmd := exec.Command(exe, "--config", path)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	p := startCmd(t, 1, cmd)
	_, port, _ := net.SplitHostPort(p.waitLog(t, "admin listening", 1)[0]["addr"].(string))
	adminV4, adminV6 := "127.0.0.1:"+port, "[::1]:"+port
	if err := os.Remove(exe); err != nil { // an upgrade now fails at once
		t.Fatal(err)
	}

	post := func(auth string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+adminV4+"/upgrade", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := directHTTPClient(10 * time.Second).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without WWW-Authenticate: Bearer: %v", resp.Header)
		}
		return resp.StatusCode, string(b)
	}
	for _, a := range []string{adminV4, adminV6} {
		if code, body := httpGet(t, "http://"+a+"/metrics"); code != 200 || !strings.Contains(body, "bmpproxy_connections_accepted_total") {
			t.Fatalf("GET %s/metrics without a token: %d", a, code)
		}
	}
	if code, body := post(""); code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
		t.Fatalf("POST /upgrade without a token: %d %s", code, body)
	}
	if code, body := post("Bearer e2e-wrong"); code != http.StatusForbidden {
		t.Fatalf("POST /upgrade with a wrong token: %d %s", code, body)
	}
	if code, body := post("Bearer e2e-token-1"); code == http.StatusUnauthorized || code == http.StatusForbidden {
		t.Fatalf("POST /upgrade with the token: %d %s", code, body)
	}
	p.waitLog(t, "upgrade failed; this process keeps serving", 1)

	// The client: refused without the token, let through with it.
	out, err := exec.Command(binPath(), "upgrade", "--admin", adminV4).CombinedOutput()
	if code := exitCode(err); code != exitError || !strings.Contains(string(out), "401 Unauthorized") {
		t.Fatalf("bmpproxy upgrade --admin without a token: exit %d\n%s", code, out)
	}
	out, err = exec.Command(binPath(), "upgrade", "--admin", adminV4, "--token-file", tokenFile).CombinedOutput()
	if code := exitCode(err); code != exitError || !strings.Contains(string(out), "keeps serving") {
		t.Fatalf("bmpproxy upgrade --admin --token-file: exit %d\n%s", code, out)
	}
	client := exec.Command(binPath(), "upgrade", "--admin", adminV6)
	client.Env = append(os.Environ(), "BMPPROXY_ADMIN_TOKEN_FILE="+tokenFile)
	if out, err := client.CombinedOutput(); exitCode(err) != exitError || !strings.Contains(string(out), "keeps serving") {
		t.Fatalf("bmpproxy upgrade --admin with BMPPROXY_ADMIN_TOKEN_FILE: %v\n%s", err, out)
	}
	p.waitLog(t, "upgrade failed; this process keeps serving", 3)

	// SIGHUP: a new token replaces the old one.
	if err := os.WriteFile(tokenFile, []byte("e2e-token-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "the admin token changed", 1)
	if code, body := post("Bearer e2e-token-1"); code != http.StatusForbidden {
		t.Fatalf("POST /upgrade with the old token after the reload: %d %s", code, body)
	}
	if code, body := post("Bearer e2e-token-2"); code == http.StatusUnauthorized || code == http.StatusForbidden {
		t.Fatalf("POST /upgrade with the new token: %d %s", code, body)
	}
	// A token file others may read fails the reload; the token stays.
	os.Chmod(tokenFile, 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	failed := p.waitLog(t, "reload failed; the running configuration stays in force", 1)[0]
	if e := fmt.Sprint(failed["error"]); !strings.Contains(e, "admin_token_file: "+tokenFile+": mode 0644") || !strings.Contains(e, "chmod 600") {
		t.Fatalf("the reload failure says %q", e)
	}
	if code, body := post("Bearer e2e-token-2"); code == http.StatusUnauthorized || code == http.StatusForbidden {
		t.Fatalf("POST /upgrade with the token after a failed reload: %d %s", code, body)
	}

	if n := len(p.logs.match("admin request refused")); n < 3 {
		t.Errorf("%d refusals logged, want at least 3", n)
	}
	if strings.Contains(p.logs.String(), "e2e-token") || strings.Contains(p.logs.String(), "e2e-wrong") {
		t.Errorf("a token is in the log:\n%s", p.logs)
	}
	if code, _ := httpGet(t, "http://"+adminV4+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d after the refused and failed upgrades", code)
	}
	if st := p.stop(t, syscall.SIGTERM, 10*time.Second); st.ExitCode() != 0 {
		t.Fatalf("exit %v after SIGTERM", st)
	}
}

// TestTargetNotResolving: a target name that does not resolve is found at
// start, not when a router connects: a warning names the listener and the
// target, /readyz stays 200 and says so, and a gauge shows it. The
// listening line shows the listener's mode, pre-check and target.
func TestTargetNotResolving(t *testing.T) {
	path := writeConfig(t, t.TempDir(), `
admin: "127.0.0.1:0"
listeners:
  - name: routers
    listen: "127.0.0.1:0"
    target: "collector.invalid:5000"
    bmp: true
    connect_timeout: 2s
`)
	p := start(t, 1, "--config", path)
	admin := "http://" + p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	l := p.waitLog(t, "listening", 1)[0]
	if l["listener"] != "routers" || l["proxy_protocol"] != "v2" || l["bmp"] != true || l["target"] != "collector.invalid:5000" {
		t.Errorf("listening line %v: want the listener's mode, pre-check and target", l)
	}
	w := p.waitLog(t, "target does not resolve; its connections fail until it does", 1)[0]
	if w["level"] != "warn" || w["listener"] != "routers" || w["target"] != "collector.invalid:5000" {
		t.Errorf("warning %v: want the listener and the target named", w)
	}
	code, body := httpGet(t, admin+"/readyz")
	if code != 200 || !strings.Contains(body, `listener "routers": target collector.invalid:5000 does not resolve (`) {
		t.Errorf("/readyz = %d %q: want 200, naming the target that does not resolve", code, body)
	}
	_, m := httpGet(t, admin+"/metrics")
	if v := metric(m, `bmpproxy_target_resolves{listener="routers",target="collector.invalid:5000"}`); v != 0 {
		t.Errorf("target_resolves = %v, want 0", v)
	}
	if st := p.stop(t, syscall.SIGTERM, 10*time.Second); st.ExitCode() != 0 {
		t.Fatalf("exit status %d", st.ExitCode())
	}
}
