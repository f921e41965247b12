package main

import (
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/procfs"
	"github.com/bmpproxy/bmpproxy/internal/waitfor"
)

// TestUpgradeAsPID1 runs bmpproxy as PID 1 of a PID namespace, as in a
// container: after handing over it stays as init, forwards signals to
// the serving process, follows a second upgrade, and exits with the
// serving process's status.
func TestUpgradeAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) not installed")
	}
	coll := hashCollector(t)
	cmd := exec.Command(unshare, "--pid", "--fork", binPath(), "--listen", "127.0.0.1:0", "--target", coll.Addr(),
		"--bmp", "--admin-listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := startCmd(t, 1, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	admin := p.waitLog(t, "admin listening", 1)[0]["addr"].(string)
	if pid, _ := adminVersion(t, admin); pid != 1 {
		t.Fatalf("bmpproxy runs as pid %d in its namespace, want 1", pid)
	}
	var init int // PID 1, as this namespace numbers it
	waitfor.Within(t, binaryWait, "unshare's child", func() bool {
		kids := procfs.Children(cmd.Process.Pid)
		if len(kids) > 0 {
			init = kids[0]
		}
		return init != 0
	})

	stop := make(chan struct{})
	routers := make([]router, 5)
	var wg sync.WaitGroup
	started := make(chan struct{}, len(routers))
	for i := range routers {
		routers[i].name = "pid1-" + strconv.Itoa(i)
		wg.Add(1)
		go routers[i].run(p.addr(0), stop, &wg, started)
	}
	for range routers {
		<-started
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}()

	last := 1
	for round := 1; round <= 2; round++ {
		streams(t, admin, len(routers))
		// Always PID 1: the first time it upgrades itself, then it
		// forwards the signal to the serving process.
		syscall.Kill(init, syscall.SIGUSR2)
		var pid int
		waitfor.Within(t, binaryWait, "a new serving process", func() bool {
			pid, _ = adminVersion(t, admin)
			return pid != last
		})
		if !procfs.Alive(init) {
			t.Fatalf("upgrade %d: PID 1 exited", round)
		}
		last = pid
	}
	if n := len(p.logs.match("init: following the new serving process")); n != 1 {
		t.Errorf("PID 1 followed %d handovers by MAINPID, want 1 (the second)", n)
	}
	streams(t, admin, len(routers))
	close(stop)
	wg.Wait()
	for _, r := range routers {
		if r.err != nil {
			t.Errorf("session %s: %v", r.name, r.err)
		}
	}
	// SIGTERM to PID 1 reaches the serving process, which stops; PID 1
	// exits with its status, and unshare with PID 1's.
	syscall.Kill(init, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("PID 1 did not exit after SIGTERM")
	}
	if code := p.state.ExitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if len(p.logs.match("init: forwarding")) == 0 {
		t.Error("PID 1 logged no forwarded signal")
	}
}
