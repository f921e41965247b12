package main

import (
	"bytes"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestResyncUpgrade upgrades the binary (SIGUSR2) under a router session
// with two legs and resync: the successor takes the legs and the router's
// state over, so no collector sees a second connection or a byte twice,
// and a collector that restarts after the upgrade is replayed the whole
// state from what the successor took over. One router session, one
// closing line, written by the successor.
func TestResyncUpgrade(t *testing.T) {
	msgs := bmpcheck.Generate(bmpcheck.GenConfig{Seed: 5, Prefixes: 4000})
	half := len(msgs) / 2
	first, rest := bmpcheck.Encode(msgs[:half]), bmpcheck.Encode(msgs[half:])
	stream := append(append([]byte(nil), first...), rest...)
	want, err := bmpcheck.Parse(stream)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newBMPCollector(t), newBMPCollector(t)
	path := resyncConfig(t, a, b)
	cmd := exec.Command(binPath(), "--config", path)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // cleanup kills the successor too
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	admin := p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	router := dialT(t, "tcp", listenerAddrs(p)["routers"])
	router.Write(first)
	waitfor.Within(t, binaryWait, "both collectors to have the first half", func() bool {
		return bytes.Equal(a.session(0), first) && bytes.Equal(b.session(0), first)
	})

	pid0 := cmd.Process.Pid
	syscall.Kill(pid0, syscall.SIGUSR2)
	var pid1 int
	waitfor.Within(t, binaryWait, "a new pid on /version", func() bool {
		pid1, _ = adminVersion(t, admin)
		return pid1 != pid0
	})
	waitExit(t, pid0)
	router.Write(rest)
	waitfor.Within(t, binaryWait, "both collectors to have the whole stream", func() bool {
		return len(a.session(0)) >= len(stream) && len(b.session(0)) >= len(stream)
	})
	for name, c := range map[string]*bmpCollector{"a": a, "b": b} {
		if c.count() != 1 || !bytes.Equal(c.session(0), stream) {
			t.Errorf("collector %s: %d sessions, %d bytes; want one session with the %d bytes the router sent", name, c.count(), len(c.session(0)), len(stream))
		}
	}
	rr := getRouters(t, "http://"+admin)
	if len(rr.Routers) != 1 || rr.Routers[0].Resync == nil || rr.Routers[0].Resync.Routes != want.RouteCount() ||
		len(rr.Routers[0].Legs) != 2 || *rr.Routers[0].Legs[0].Replays != 0 || *rr.Routers[0].Legs[1].Replays != 0 {
		t.Fatalf("/routers after the upgrade %+v: want one session keeping %d routes, two legs never replayed", rr, want.RouteCount())
	}

	// The state the successor took over is what a replay comes from.
	b.stop()
	b.start()
	waitfor.Within(t, binaryWait, "b, restarted, to be replayed the whole state", func() bool {
		return b.count() == 2 && b.holds(1, want)
	})
	if n := len(p.logs.match("router connected")); n != 1 {
		t.Errorf("%d router connected lines, want 1", n)
	}
	router.Close()
	waitfor.Within(t, binaryWait, "the session's closing line", func() bool { return len(p.logs.match("connection closed")) >= 1 })
	syscall.Kill(pid1, syscall.SIGTERM)
	waitExit(t, pid1)
	<-p.done
	lines := p.logs.match("connection closed")
	if len(lines) != 1 || lines[0]["reason"] != "closed" || lines[0]["bytes_from_client"] != float64(len(stream)) {
		t.Errorf("closing lines %v: want one, clean, counting the %d bytes from before and after the upgrade", lines, len(stream))
	}
}
