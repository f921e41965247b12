package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/proxy"
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
