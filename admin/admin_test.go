package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/pool"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestHandlerBeforeStart checks the answers of a proxy that is not
// serving yet: alive, not ready, no routers, and metrics that render.
func TestHandlerBeforeStart(t *testing.T) {
	h := Handler(&proxy.Server{})
	for _, tt := range []struct {
		path, method string
		code         int
		body         string // substring
	}{
		{"/healthz", "GET", 200, "ok"},
		{"/readyz", "GET", 503, "not ready"},
		{"/routers", "GET", 200, `"routers": []`},
		{"/metrics", "GET", 200, "bmpproxy_pipes_in_use 0"},
		{"/metrics", "POST", 405, ""},
		{"/nothing", "GET", 404, ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.body) {
			t.Errorf("%s %s = %d %q, want %d with %q", tt.method, tt.path, rec.Code, rec.Body.String(), tt.code, tt.body)
		}
	}
}

// TestRunStops checks that Run serves, reports its address, and returns
// when its context ends, leaving no goroutine; and that a taken address
// is an error naming it.
func TestRunStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan net.Addr, 1)
	s := &Server{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Proxy: &proxy.Server{}, Ready: func(a net.Addr) { addrs <- a }}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	a := <-addrs
	resp, err := http.Get("http://" + a.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()

	taken := &Server{Addr: netip.MustParseAddrPort(a.String()), Proxy: &proxy.Server{}}
	if err := taken.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "admin: listen on "+a.String()+": bind: address already in use") {
		t.Errorf("Run on a taken address = %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

// fakeProxy is a Proxy with fixed answers.
type fakeProxy struct {
	stats     proxy.Stats
	listeners []proxy.ListenerStats
	routers   []proxy.RouterStatus
	targets   []proxy.TargetStatus
	pools     []proxy.PoolStatus
	ready     bool
}

func (f *fakeProxy) Stats() proxy.Stats                   { return f.stats }
func (f *fakeProxy) ListenerStats() []proxy.ListenerStats { return f.listeners }
func (f *fakeProxy) Routers() []proxy.RouterStatus        { return f.routers }
func (f *fakeProxy) Targets() []proxy.TargetStatus        { return f.targets }
func (f *fakeProxy) Pools() []proxy.PoolStatus            { return f.pools }
func (f *fakeProxy) IsReady() bool                        { return f.ready }

// TestAdminTokenMatrix is the guard on state-changing endpoints: every
// combination of a loopback or other admin address, no token configured
// or one with no, a wrong or the right Authorization header, and a
// read-only (GET /metrics) or state-changing (POST /upgrade) request.
// The upgrade runs only where the answer is 200, and neither token is
// ever logged.
func TestAdminTokenMatrix(t *testing.T) {
	const secret, wrong = "s3cret-token", "not-the-token"
	type auth int
	const (
		noToken    auth = iota // none configured, no header sent
		headerNone             // configured; no header
		headerWrong
		headerRight
	)
	authNames := []string{"no token configured", "no header", "wrong token", "right token"}
	for _, tt := range []struct {
		addr   string
		auth   auth
		method string
		code   int
	}{
		{"127.0.0.1:9180", noToken, "GET", 200},
		{"127.0.0.1:9180", noToken, "POST", 200},
		{"127.0.0.1:9180", headerNone, "GET", 200},
		{"127.0.0.1:9180", headerNone, "POST", 401},
		{"127.0.0.1:9180", headerWrong, "GET", 200},
		{"127.0.0.1:9180", headerWrong, "POST", 403},
		{"127.0.0.1:9180", headerRight, "GET", 200},
		{"127.0.0.1:9180", headerRight, "POST", 200},
		{"[::]:9180", noToken, "GET", 200},
		{"[::]:9180", noToken, "POST", 403},
		{"[::]:9180", headerNone, "GET", 200},
		{"[::]:9180", headerNone, "POST", 401},
		{"[::]:9180", headerWrong, "GET", 200},
		{"[::]:9180", headerWrong, "POST", 403},
		{"[::]:9180", headerRight, "GET", 200},
		{"[::]:9180", headerRight, "POST", 200},
	} {
		name := fmt.Sprintf("%s %s %s", tt.addr, authNames[tt.auth], tt.method)
		t.Run(name, func(t *testing.T) {
			var logs bytes.Buffer
			upgrades := 0
			s := &Server{
				Addr:    netip.MustParseAddrPort(tt.addr),
				Proxy:   &fakeProxy{},
				Logger:  zerolog.New(&logs),
				Version: "v-test",
				Upgrade: func(context.Context) (int, string, error) { upgrades++; return 4242, "v-next", nil },
			}
			if tt.auth != noToken {
				tok := NewToken(secret)
				s.Token = func() *Token { return tok }
			}
			path := "/metrics"
			if tt.method == "POST" {
				path = "/upgrade"
			}
			req := httptest.NewRequest(tt.method, path, nil)
			switch tt.auth {
			case headerWrong:
				req.Header.Set("Authorization", "Bearer "+wrong)
			case headerRight:
				req.Header.Set("Authorization", "Bearer "+secret)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Fatalf("%s %s = %d %s, want %d", tt.method, path, rec.Code, rec.Body, tt.code)
			}
			if got := rec.Header().Get("WWW-Authenticate"); (rec.Code == 401) != strings.HasPrefix(got, "Bearer") {
				t.Errorf("status %d with WWW-Authenticate %q", rec.Code, got)
			}
			if want := tt.method == "POST" && tt.code == 200; (upgrades == 1) != want || upgrades > 1 {
				t.Errorf("the upgrade ran %d times", upgrades)
			}
			if rec.Code == 401 || rec.Code == 403 {
				var e ErrorResult
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
					t.Errorf("refusal body %q is not JSON with the reason: %v", rec.Body, err)
				}
				if tt.auth == noToken && !strings.Contains(e.Error, "admin_token_file") {
					t.Errorf("refusal %q does not name the setting", e.Error)
				}
				if !strings.Contains(logs.String(), "admin request refused") {
					t.Errorf("the refusal was not logged: %s", logs.String())
				}
			}
			if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), wrong) {
				t.Errorf("a token was logged: %s", logs.String())
			}
		})
	}
}

// TestBearer reads Authorization headers.
func TestBearer(t *testing.T) {
	for _, tt := range []struct {
		h, tok string
		ok     bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer  abc ", "abc", true},
		{"Bearer ", "", false},
		{"Bearer", "", false},
		{"Basic YWxhZGRpbjpvcGVuc2VzYW1l", "", false},
		{"", "", false},
	} {
		if tok, ok := bearer(tt.h); tok != tt.tok || ok != tt.ok {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tt.h, tok, ok, tt.tok, tt.ok)
		}
	}
}

// TestReadTokenFile checks what a token file must be: present, not empty,
// readable by its owner only, and a token an HTTP header can carry.
func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		name string
		path string
		tok  string
		err  []string // substrings of the error; none means success
	}{
		{"good", write("good", "s3cret\n", 0o600), "s3cret", nil},
		{"good 0400", write("ro", "  s3cret\r\n", 0o400), "s3cret", nil},
		{"missing", filepath.Join(dir, "missing"), "", []string{filepath.Join(dir, "missing"), "no such file", "chmod 600"}},
		{"empty", write("empty", "", 0o600), "", []string{filepath.Join(dir, "empty"), "empty"}},
		{"white space only", write("blank", " \n\t\n", 0o600), "", []string{"empty"}},
		{"mode 0644", write("open", "s3cret\n", 0o644), "", []string{filepath.Join(dir, "open"), "mode 0644", "chmod 600 " + filepath.Join(dir, "open")}},
		{"mode 0604", write("others", "s3cret\n", 0o604), "", []string{"mode 0604"}},
		{"space inside", write("space", "s3 cret\n", 0o600), "", []string{"byte 2", "not printable ASCII"}},
		{"too long", write("long", strings.Repeat("x", MaxTokenFile+1), 0o600), "", []string{"longer than 4096 bytes"}},
		{"directory", dir, "", []string{"not a regular file"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ReadTokenFile(tt.path)
			if tt.err == nil {
				if err != nil || tok != tt.tok {
					t.Fatalf("ReadTokenFile = %q, %v; want %q", tok, err, tt.tok)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadTokenFile = %q; want an error", tok)
			}
			for _, s := range tt.err {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q shows the token", err)
			}
		})
	}
}

// TestCheckTokenMode: only the owner may read a token file, except that
// root's file may be read by its group, as a Kubernetes Secret mounted
// with fsGroup is (0440, root:fsGroup).
func TestCheckTokenMode(t *testing.T) {
	for _, tt := range []struct {
		mode  os.FileMode
		owner int
		ok    bool
	}{
		{0o600, 1000, true},
		{0o400, 1000, true},
		{0o640, 1000, false},
		{0o440, 1000, false},
		{0o604, 1000, false},
		{0o400, 0, true},
		{0o440, 0, true},
		{0o640, 0, true},
		{0o660, 0, false},
		{0o444, 0, false},
		{0o644, 0, false},
		{0o450, 0, false},
	} {
		if err := checkTokenMode(tt.mode, tt.owner); (err == nil) != tt.ok {
			t.Errorf("checkTokenMode(%04o, uid %d) = %v, want ok %v", tt.mode, tt.owner, err, tt.ok)
		}
	}
}

// TestToken compares tokens.
func TestToken(t *testing.T) {
	a := NewToken("abc")
	if !a.Matches("abc") || a.Matches("abd") || a.Matches("ab") || a.Matches("") {
		t.Error("Matches")
	}
	if !a.Equal(NewToken("abc")) || a.Equal(NewToken("x")) || a.Equal(nil) || !(*Token)(nil).Equal(nil) {
		t.Error("Equal")
	}
}

// TestMetricsDescribed scrapes through a pedantic registry, which fails
// on a metric that Describe does not list, and checks that Describe lists
// nothing that is not collected: one descriptor per metric, from one
// list. Refusals are counted once, in connections_refused_total.
func TestMetricsDescribed(t *testing.T) {
	p := &fakeProxy{listeners: []proxy.ListenerStats{{
		Name:    "bmp",
		Refused: map[string]uint64{proxy.ReasonHeader: 3, proxy.ReasonBMP: 2},
		Legs:    []proxy.LegStats{{Target: "collector:5000", Up: 1}},
	}}, targets: []proxy.TargetStatus{{Listener: "bmp", Target: "collector:5000", Resolves: true}},
		pools: []proxy.PoolStatus{{Listener: "routers", Moves: map[string]uint64{proxy.MoveFailover: 1},
			Members: []proxy.MemberStatus{{MemberStatus: pool.MemberStatus{Addr: netip.MustParseAddrPort("198.51.100.12:5000"), Healthy: true}, Routers: 2}}}}}
	c := newCollector(p)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	collected := map[string]bool{}
	for _, f := range families {
		collected[f.GetName()] = true
	}
	described := map[string]bool{}
	ch := make(chan *prometheus.Desc, 64)
	c.Describe(ch)
	close(ch)
	for d := range ch {
		// Desc has no name accessor; its String says fqName: "...".
		m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor %s", d)
		}
		described[m[1]] = true
	}
	if !maps.Equal(collected, described) {
		t.Errorf("collected %v\ndescribed %v", slices.Sorted(maps.Keys(collected)), slices.Sorted(maps.Keys(described)))
	}
	for _, gone := range []string{"bmpproxy_proxy_header_errors_total", "bmpproxy_bmp_precheck_rejections_total"} {
		if collected[gone] {
			t.Errorf("%s is back; connections_refused_total{reason} counts it", gone)
		}
	}
	rec := httptest.NewRecorder()
	Handler(p).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`bmpproxy_connections_refused_total{listener="bmp",reason="proxy_header"} 3`,
		`bmpproxy_connections_refused_total{listener="bmp",reason="bmp"} 2`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
