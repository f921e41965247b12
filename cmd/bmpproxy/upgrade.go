package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bmpproxy/bmpproxy/admin"
	"github.com/bmpproxy/bmpproxy/handoff"
	"github.com/bmpproxy/bmpproxy/internal/procfs"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/bmpproxy/bmpproxy/sdnotify"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

// upgradeReadyTimeout bounds how long a successor may take to rebuild the
// state and report ready, and to confirm after "go".
const upgradeReadyTimeout = 15 * time.Second

// adminName names the admin listening socket in a handover snapshot.
const adminName = "admin"

// upgrader hands this process over to the binary now at its own path
// (docs/upgrade.md). One upgrade runs at a time.
type upgrader struct {
	exe    string   // the binary's path, resolved at start
	args   []string // this process's argv, given to the successor as is
	srv    *proxy.Server
	log    zerolog.Logger
	notify sdnotify.Notifier
	ctx    context.Context // the serving context: a stop aborts an upgrade

	admin     atomic.Pointer[pausableListener] // the admin socket, passed along when set
	mu        sync.Mutex
	successor atomic.Int64 // pid, once handed over; 0 before
}

// handedOver reports whether a successor took over.
func (u *upgrader) handedOver() bool { return u.successor.Load() != 0 }

// errUpgradeRunning refuses a second concurrent upgrade.
var errUpgradeRunning = errors.New("an upgrade is already running")

// upgrade hands over and returns the successor's pid and version, or
// the reason it failed; then this process serves on.
func (u *upgrader) upgrade() (pid int, version string, err error) {
	if !u.mu.TryLock() {
		return 0, "", errUpgradeRunning
	}
	defer u.mu.Unlock()
	if u.handedOver() {
		return 0, "", errors.New("already handed over")
	}
	u.log.Info().Str("binary", u.exe).Msg("upgrade requested")
	err = u.srv.Upgrade(u.ctx, func(ctx context.Context, snap *proxy.Snapshot) error {
		if pl := u.admin.Load(); pl != nil {
			pl.pause()
			defer func() {
				if !u.handedOver() {
					pl.unpause()
				}
			}()
			snap.AddExtra(adminName, pl)
		}
		succ, err := handoff.Spawn{
			Path: u.exe, Args: u.args, Env: os.Environ(),
			FDs: snap.FDs, State: snap, ReadyTimeout: upgradeReadyTimeout,
		}.Start()
		if err != nil {
			return fmt.Errorf("successor %s: %w", u.exe, err)
		}
		if err := ctx.Err(); err != nil { // stopping: keep the sessions here, for the drain
			succ.Abort()
			return fmt.Errorf("stopping: %w", err)
		}
		u.log.Info().Int("successor_pid", succ.Pid).Str("successor_version", succ.Version).
			Msg("upgrade: the successor rebuilt the state; telling it to go")
		if err := succ.Commit(); err != nil {
			return fmt.Errorf("successor %s (pid %d): %w", u.exe, succ.Pid, err)
		}
		u.successor.Store(int64(succ.Pid))
		pid, version = succ.Pid, succ.Version
		if err := u.notify.MainPID(pid, 5*time.Second); err != nil {
			u.log.Warn().Err(err).Int("successor_pid", pid).Msg("upgrade: could not tell the service manager the new main pid")
		}
		return nil
	})
	return pid, version, err
}

// watchUpgrades upgrades on every SIGUSR2 until ctx is done or the
// process has handed over. The returned function stops it and waits for
// it.
func (u *upgrader) watchUpgrades(ctx context.Context) (stop func()) {
	return onSignal(ctx, syscall.SIGUSR2, func(context.Context) bool {
		u.log.Info().Msg("SIGUSR2: upgrading")
		if _, _, err := u.upgrade(); errors.Is(err, errUpgradeRunning) {
			u.log.Warn().Msg("SIGUSR2 ignored: an upgrade is already running")
		}
		return !u.handedOver()
	})
}

// successorState is a predecessor's handover, when this process was
// started as a successor.
type successorState struct {
	pred *handoff.Predecessor
	snap *proxy.Snapshot
	done atomic.Bool // took over, or gave up: the predecessor was told
}

// successorFromEnv returns the handover this process was started for, or
// nil for an ordinary start.
func successorFromEnv() (*successorState, error) {
	pred, err := handoff.FromEnv()
	if err != nil || pred == nil {
		return nil, err
	}
	snap := new(proxy.Snapshot)
	if err := json.Unmarshal(pred.State, snap); err != nil {
		err = fmt.Errorf("handover state: %w", err)
		pred.Fail(err)
		return nil, err
	}
	snap.FDs = pred.FDs
	return &successorState{pred: pred, snap: snap}, nil
}

// takeover reports ready to the predecessor and waits for "go".
func (s *successorState) takeover() error {
	s.done.Store(true)
	return s.pred.Ready(versionString(), 2*upgradeReadyTimeout)
}

// fail tells the predecessor why this process cannot take over, unless
// it was told already.
func (s *successorState) fail(err error) {
	if s != nil && err != nil && !s.done.Swap(true) {
		s.pred.Fail(err)
	}
}

// adminListener returns the predecessor's admin socket for addr, if it
// passed one that serves it.
func (s *successorState) adminListener(addr netip.AddrPort) (net.Listener, bool) {
	if s == nil {
		return nil, false
	}
	ln, err := s.snap.TakeExtra(adminName, addr)
	return ln, err == nil && ln != nil
}

// closeUnused closes passed sockets that nothing took, such as the admin
// socket of an admin address the configuration no longer has.
func (s *successorState) closeUnused() {
	if s != nil {
		s.snap.CloseExtra()
	}
}

// upgradeCommand is "bmpproxy upgrade": it asks a running bmpproxy to hand
// over to the binary at its path, by signal or through the admin listener.
func upgradeCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "upgrade",
		Usage: "hand a running bmpproxy's listeners and open sessions to the binary now at its path",
		UsageText: "bmpproxy upgrade --pid PID\n" +
			"bmpproxy upgrade --admin HOST:PORT [--token-file FILE]",
		Description: "With --pid, sends SIGUSR2, waits until that process has handed over and exited, and\n" +
			"reports its successor: the process it started that now holds its listening sockets. With --admin,\n" +
			"asks the admin listener (POST /upgrade) and prints the successor's pid and version; --token-file\n" +
			"sends the token of the process's --admin-token-file. Either way a failed upgrade leaves the\n" +
			"running process serving every session, and the reason is in its log.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "pid", Usage: "process to upgrade"},
			&cli.StringFlag{Name: "admin", Usage: "admin listener address of the process to upgrade, host:port"},
			&cli.StringFlag{
				Name:    "token-file",
				Usage:   "with --admin: file (mode 0600) with the bearer token of the process's --admin-token-file",
				EnvVars: []string{"BMPPROXY_ADMIN_TOKEN_FILE"},
			},
			&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "how long to wait for the handover"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			pid, admin := c.Int("pid"), c.String("admin")
			if (pid == 0) == (admin == "") {
				return usagef("upgrade: give exactly one of --pid and --admin")
			}
			timeout := c.Duration("timeout")
			if timeout <= 0 {
				return usagef("upgrade: --timeout must be positive")
			}
			if admin != "" {
				return upgradeByAdmin(stdout, admin, c.String("token-file"), timeout)
			}
			return upgradeByPid(stdout, pid, timeout)
		},
	}
}

// upgradeByPid sends SIGUSR2 to pid, waits for it to exit, which it does
// only once a successor runs, and names the successor. pid's TCP
// listening sockets are noted before the signal; once pid has exited
// (a zombie its parent has not reaped counts), the successor is the
// earliest started of the processes started since pid that hold one of
// them. That cannot be missed however quickly pid exits, unlike its
// children, which are gone with it. A successor whose configuration no
// longer names any of those sockets has closed them; then the last child
// of pid seen while it ran is reported, if it still runs.
func upgradeByPid(stdout io.Writer, pid int, timeout time.Duration) error {
	if pid <= 1 {
		return usagef("upgrade: --pid %d: not a bmpproxy process to signal", pid)
	}
	listeners, err := procfs.ListeningTCP(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("upgrade: pid %d: no such process", pid)
	}
	if err != nil {
		return fmt.Errorf("upgrade: pid %d: %w", pid, err)
	}
	if len(listeners) == 0 {
		return fmt.Errorf("upgrade: pid %d holds no TCP listening socket: not a bmpproxy to upgrade", pid)
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("upgrade: pid %d: %w", pid, err)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("upgrade: signal pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	child := 0
	for procfs.Alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("upgrade: pid %d still runs after %s: the upgrade failed or is still going; see its log", pid, timeout)
		}
		if kids := procfs.Children(pid); len(kids) > 0 {
			child = kids[len(kids)-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	holders, err := procfs.HoldersSince(listeners, st.StartTime)
	if err != nil {
		return fmt.Errorf("upgrade: pid %d exited; looking for its successor: %w", pid, err)
	}
	successor := 0
	switch {
	case len(holders) > 0:
		successor = holders[0]
	case child != 0 && procfs.Alive(child):
		successor = child
	default:
		return fmt.Errorf("upgrade: pid %d exited, and no process it started holds its listening sockets: it exited without a successor; see its log", pid)
	}
	fmt.Fprintf(stdout, "pid %d handed over to pid %d\n", pid, successor)
	return nil
}

// upgradeByAdmin posts to the admin listener's /upgrade, with the token
// in tokenFile if set, and prints the result.
func upgradeByAdmin(stdout io.Writer, addr, tokenFile string, timeout time.Duration) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return usagef("upgrade: --admin %q: want host:port with an IP address: %v", addr, err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+ap.String()+"/upgrade", nil)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	if tokenFile != "" {
		tok, err := admin.ReadTokenFile(tokenFile)
		if err != nil {
			return usagef("upgrade: --token-file: %v", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := directHTTPClient(timeout).Do(req)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	defer resp.Body.Close()
	var r admin.UpgradeResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r); err != nil {
		return fmt.Errorf("upgrade: %s: POST /upgrade answered %s: %w", ap, resp.Status, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("upgrade: %s refused POST /upgrade (%s): %s", ap, resp.Status, r.Error)
	default:
		return fmt.Errorf("upgrade failed; pid %d keeps serving: %s", r.Pid, r.Error)
	}
	fmt.Fprintf(stdout, "pid %d handed over to pid %d (%s)\n", r.PreviousPid, r.Pid, r.Version)
	return nil
}

// pausableListener is the admin listening socket. During an upgrade it
// stops accepting, without closing, so that connections queue in the
// kernel for whichever process serves next: the predecessor must not
// accept a request it would exit before answering.
type pausableListener struct {
	*net.TCPListener
	mu     sync.Mutex
	paused bool
	closed bool
	resume chan struct{} // closed by unpause and Close
}

func newPausableListener(tl *net.TCPListener) *pausableListener {
	return &pausableListener{TCPListener: tl, resume: make(chan struct{})}
}

// Accept waits while paused.
func (l *pausableListener) Accept() (net.Conn, error) {
	for {
		c, err := l.TCPListener.Accept()
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return c, err
		}
		l.mu.Lock()
		paused, resume := l.paused, l.resume
		l.mu.Unlock()
		if !paused {
			continue // unpaused meanwhile; the deadline is cleared
		}
		<-resume
	}
}

// pause stops Accept; connections queue.
func (l *pausableListener) pause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.paused || l.closed {
		return
	}
	l.paused = true
	l.TCPListener.SetDeadline(time.Unix(1, 0)) // wakes a blocked Accept
}

// unpause lets Accept go on.
func (l *pausableListener) unpause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.paused || l.closed {
		return
	}
	l.paused = false
	l.TCPListener.SetDeadline(time.Time{})
	close(l.resume)
	l.resume = make(chan struct{})
}

// Close closes the socket and ends a paused Accept.
func (l *pausableListener) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.resume)
	}
	l.mu.Unlock()
	return l.TCPListener.Close()
}
