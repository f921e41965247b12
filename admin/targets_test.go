package admin

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/proxy"
)

// TestTargetsShown: a target that does not resolve is named in /readyz's
// body, which stays 200, and each target has a target_resolves gauge.
func TestTargetsShown(t *testing.T) {
	p := &fakeProxy{ready: true, targets: []proxy.TargetStatus{
		{Listener: "routers", Target: "collector:5000", Error: "lookup collector: no such host"},
		{Listener: "rest", Target: "198.51.100.10:8001", Resolves: true},
	}}
	h := Handler(p)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	want := "ready\nlistener \"routers\": target collector:5000 does not resolve (lookup collector: no such host); its connections fail until it does\n"
	if rec.Code != 200 || rec.Body.String() != want {
		t.Errorf("/readyz = %d %q, want 200 %q", rec.Code, rec.Body.String(), want)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`bmpproxy_target_resolves{listener="routers",target="collector:5000"} 0`,
		`bmpproxy_target_resolves{listener="rest",target="198.51.100.10:8001"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
