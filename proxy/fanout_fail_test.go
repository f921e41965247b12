package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestFanoutEveryCollectorResets: routers fan out to two collectors,
// which both reset every connection; without resync every session ends,
// each with its one closing line, and each router sees its session
// closed. Many sessions at once, so that each way a session's last
// socket, direction or sink can end last is taken.
func TestFanoutEveryCollectorResets(t *testing.T) {
	const routers = 20
	a, b := newRecorder(t), newRecorder(t)
	ts := startServer(t, fanListener(t, conf.DefaultBuffer, a.tg.Addr(), b.tg.Addr()), nil)
	payload := randomBytes(t, 100_000)
	var ends []<-chan error
	for range routers {
		r := dial(t, "tcp", ts.addrs[0].String())
		r.Write(payload)
		ends = append(ends, readToEnd(r))
	}
	waitfor.True(t, "both collectors to get every session's bytes", func() bool {
		if a.count() != routers || b.count() != routers {
			return false
		}
		for i := range routers {
			if a.sessionLen(i) != len(payload) || b.sessionLen(i) != len(payload) {
				return false
			}
		}
		return true
	})
	a.tg.CloseConns()
	b.tg.CloseConns()
	waitfor.True(t, fmt.Sprintf("%d closing lines", routers), func() bool { return len(ts.logs.closed()) == routers })
	for _, end := range ends {
		if err := testtarget.Recv(t, end); !closedByProxy(err) {
			t.Errorf("a router's read ended with %v; want the proxy's close", err)
		}
	}
	for _, l := range ts.logs.closed() {
		if e, _ := l["error"].(string); l["reason"] != "target error" || !strings.Contains(e, "every target is down") {
			t.Errorf("closing line %v: want a target error, every target down", l)
		}
	}
	if st := ts.ListenerStats()[0]; st.Active != 0 {
		t.Errorf("%d sessions still active", st.Active)
	}
	if n := len(ts.logs.closed()); n != routers {
		t.Errorf("%d closing lines, want one per session", n)
	}
}
