package procfs

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// holdEnv makes the test binary a process that holds the descriptors it
// was started with until its stdin ends.
const holdEnv = "PROCFS_TEST_HOLD"

func TestMain(m *testing.M) {
	if os.Getenv(holdEnv) == "1" {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// inode is the inode of f's socket, read with fstat.
func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// fileOf is a duplicate of c's descriptor, closed at cleanup.
func fileOf(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestProcess reads a process this test starts with two listening TCP
// sockets (IPv4 and IPv6), a connected TCP socket, a UDP socket and a
// Unix socket: only the two listeners count as listening, every socket
// is seen as held, the holder search finds it by start time, and once it
// has exited it is not alive, first as a zombie and then gone.
func TestProcess(t *testing.T) {
	ln4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln4.Close()
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer ln6.Close()
	conn, err := net.Dial("tcp", ln4.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	accepted, err := ln4.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ux, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "", Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	files := []*os.File{
		fileOf(t, ln4.(*net.TCPListener)), fileOf(t, ln6.(*net.TCPListener)),
		fileOf(t, accepted.(*net.TCPConn)), fileOf(t, udp.(*net.UDPConn)), fileOf(t, ux),
	}
	var all []uint64
	for _, f := range files {
		all = append(all, inode(t, f))
	}
	listeners := all[:2]

	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), holdEnv+"=1", "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = files
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	if !Alive(pid) {
		t.Errorf("Alive(%d) = false for a running process", pid)
	}
	held, err := Sockets(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range all {
		if !slices.Contains(held, ino) {
			t.Errorf("Sockets(%d) = %v, missing %d", pid, held, ino)
		}
	}
	got, err := ListeningTCP(pid)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := slices.Sorted(slices.Values(listeners)); !slices.Equal(got, want) {
		t.Errorf("ListeningTCP(%d) = %v, want the two listeners %v", pid, got, want)
	}

	self, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	child, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if child.StartTime < self.StartTime {
		t.Fatalf("the child started at %d, before this process (%d)", child.StartTime, self.StartTime)
	}
	// This process holds the listener too, and started first (or in the
	// same clock tick).
	holders, err := HoldersSince(listeners[:1], self.StartTime)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(holders, pid) || !slices.Contains(holders, os.Getpid()) || len(holders) != 2 {
		t.Errorf("HoldersSince(the listener, this process's start) = %v, want %d and %d", holders, os.Getpid(), pid)
	} else if self.StartTime < child.StartTime && holders[0] != os.Getpid() {
		t.Errorf("HoldersSince = %v, want the earlier started %d first", holders, os.Getpid())
	}
	if holders, _ := HoldersSince(listeners[:1], child.StartTime+1); len(holders) != 0 {
		t.Errorf("HoldersSince(the listener, after the child's start) = %v, want none", holders)
	}
	if holders, _ := HoldersSince([]uint64{1}, 0); len(holders) != 0 {
		t.Errorf("HoldersSince(inode 1) = %v, want none", holders)
	}

	// Exited, not yet reaped: a zombie, which holds nothing.
	stdin.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still in state %c", pid, st.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if Alive(pid) {
		t.Errorf("Alive(%d) = true for a zombie", pid)
	}
	if held, _ := Sockets(pid); len(held) != 0 {
		t.Errorf("a zombie holds sockets %v", held)
	}
	if holders, _ := HoldersSince(listeners[:1], self.StartTime); slices.Contains(holders, pid) {
		t.Errorf("HoldersSince = %v, lists the zombie %d", holders, pid)
	}
	cmd.Wait()
	waited = true
	if Alive(pid) {
		t.Errorf("Alive(%d) = true once reaped", pid)
	}
	if _, err := ReadStat(pid); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadStat of a reaped process: %v, want not exist", err)
	}
	if _, err := ListeningTCP(pid); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ListeningTCP of a reaped process: %v, want not exist", err)
	}
}

// TestChildren: a process this test starts is among its children.
func TestChildren(t *testing.T) {
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), holdEnv+"=1", "GORACE=atexit_sleep_ms=0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	if kids := Children(os.Getpid()); !slices.Contains(kids, cmd.Process.Pid) {
		t.Errorf("Children = %v, want %d among them", kids, cmd.Process.Pid)
	}
}

func TestParseStat(t *testing.T) {
	tail := " 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10"
	for _, tc := range []struct {
		name, in string
		want     Stat
		err      string
	}{
		{"plain", "42 (bmpproxy) S" + tail, Stat{State: 'S', StartTime: 123456}, ""},
		{"comm with ') ' in it", "42 (a) Z (b) R" + tail, Stat{State: 'R', StartTime: 123456}, ""},
		{"zombie", "42 (x) Z" + tail, Stat{State: 'Z', StartTime: 123456}, ""},
		{"no comm", "42 x S 1", Stat{}, "no ')'"},
		{"short", "42 (x) S 1 1", Stat{}, "fields after the command name"},
		{"bad start time", "42 (x) S" + strings.Replace(tail, "123456", "soon", 1), Stat{}, "start time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseStat = %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseStat = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseListening(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name, in string
		want     []uint64
		err      string
	}{
		{"empty", header, nil, ""},
		{"listen and established", header +
			"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3001 1 0000000000000000 100 0 0 10 0\n" +
			"   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3002 1 0000000000000000 20 4 30 10 -1\n" +
			"   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3003 1 0000000000000000 100 0 0 10 0\n",
			[]uint64{3001, 3003}, ""},
		{"ipv6", header +
			"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4001 1 0000000000000000 100 0 0 10 0\n",
			[]uint64{4001}, ""},
		{"short line", header + "   0: 0100007F:1F90 00000000:0000 0A\n", nil, "line 2: 4 fields"},
		{"bad inode", header +
			"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 x 1\n", nil, "line 2: inode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseListening(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseListening = %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("parseListening = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestSocketInode(t *testing.T) {
	for _, tc := range []struct {
		link string
		want uint64
		ok   bool
	}{
		{"socket:[12345]", 12345, true},
		{"pipe:[12345]", 0, false},
		{"socket:[12345", 0, false},
		{"socket:[x]", 0, false},
		{"/dev/null", 0, false},
	} {
		if got, ok := socketInode(tc.link); got != tc.want || ok != tc.ok {
			t.Errorf("socketInode(%q) = %d, %v; want %d, %v", tc.link, got, ok, tc.want, tc.ok)
		}
	}
}
