package admin

import (
	"context"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
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
	ready     bool
}

func (f *fakeProxy) Stats() proxy.Stats                   { return f.stats }
func (f *fakeProxy) ListenerStats() []proxy.ListenerStats { return f.listeners }
func (f *fakeProxy) Routers() []proxy.RouterStatus        { return f.routers }
func (f *fakeProxy) IsReady() bool                        { return f.ready }

// TestMetricsDescribed scrapes through a pedantic registry, which fails
// on a metric that Describe does not list, and checks that Describe lists
// nothing that is not collected: one descriptor per metric, from one
// list. Refusals are counted once, in connections_refused_total.
func TestMetricsDescribed(t *testing.T) {
	p := &fakeProxy{listeners: []proxy.ListenerStats{{
		Name:    "bmp",
		Refused: map[string]uint64{proxy.ReasonHeader: 3, proxy.ReasonBMP: 2},
	}}}
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
