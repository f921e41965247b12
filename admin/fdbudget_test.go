package admin

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/proxy"
)

// TestFDBudgetShown checks /readyz's body and the two gauges: a spent
// budget is still ready, and says so; a proxy without a budget (not
// started) shows none.
func TestFDBudgetShown(t *testing.T) {
	for _, tt := range []struct {
		name     string
		p        fakeProxy
		code     int
		body     string // /readyz, exactly
		size, in string // the gauges' samples
	}{
		{"not started", fakeProxy{}, 503, "not ready: listeners are not open\n", "0", "0"},
		{"room", fakeProxy{ready: true, stats: proxy.Stats{FDBudget: 100, FDBudgetInUse: 7}},
			200, "ready\nfd budget: 7 of 100 in use\n", "100", "7"},
		{"spent", fakeProxy{ready: true, stats: proxy.Stats{FDBudget: 100, FDBudgetInUse: 99, FDBudgetReached: true}},
			200, "ready\nfd budget: 99 of 100 in use; spent: new connections wait in the listen backlog\n", "100", "99"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := Handler(&tt.p)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tt.code || rec.Body.String() != tt.body {
				t.Errorf("/readyz = %d %q, want %d %q", rec.Code, rec.Body.String(), tt.code, tt.body)
			}
			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			for _, want := range []string{"\nbmpproxy_fd_budget " + tt.size + "\n", "\nbmpproxy_fd_budget_in_use " + tt.in + "\n"} {
				if !strings.Contains(rec.Body.String(), want) {
					t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
				}
			}
		})
	}
}
