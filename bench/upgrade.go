package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// runUpgradeBench measures how long an upgrade pauses accepting, against
// the number of open connections: "bench upgrade -conns 0,1000,5000".
// The baseline is the same binary's upgrade with no connection, measured
// in the same run. Each connection sends a byte before the upgrades and
// one after; the sink must count both, so a lost connection or byte
// fails the run.
func runUpgradeBench(args []string) error {
	fs := flag.NewFlagSet("upgrade", flag.ExitOnError)
	connsFlag := fs.String("conns", "0,1000,5000", "comma-separated numbers of open connections")
	rounds := fs.Int("rounds", 3, "upgrades per size; the median is reported")
	fs.Parse(args)
	var sizes []int
	for _, f := range strings.Split(*connsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return fmt.Errorf("-conns: %q is not a count", f)
		}
		sizes = append(sizes, n)
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	for _, n := range sizes {
		// This process holds 2 fds per connection, the proxy 2, plus slack.
		if uint64(2*n+200) > lim.Cur {
			return fmt.Errorf("-conns %d needs %d fds; the limit is %d (ulimit -n)", n, 2*n+200, lim.Cur)
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bmpproxy-upgrade-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bmpproxy")
	if err := goBuild(root, bin, "./cmd/bmpproxy"); err != nil {
		return err
	}

	fmt.Printf("| open connections | freeze (median) | accept pause (median) | POST /upgrade (median) | pause per connection | pause vs. 0 connections | bytes checked |\n")
	fmt.Printf("|---:|---:|---:|---:|---:|---:|---:|\n")
	var base time.Duration
	for _, n := range sizes {
		r, err := upgradeRun(bin, n, *rounds)
		if err != nil {
			return fmt.Errorf("%d connections: %w", n, err)
		}
		if n == sizes[0] {
			base = r.pause
		}
		per := "–"
		if n > 0 && base > 0 && n != sizes[0] {
			per = fmt.Sprintf("%.1f µs", float64(r.pause-base)/float64(n)/1e3)
		}
		ratio := "–"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(r.pause)/float64(base))
		}
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %d of %d |\n", n, r.freeze.Round(10*time.Microsecond),
			r.pause.Round(10*time.Microsecond), r.post.Round(10*time.Microsecond), per, ratio, r.bytes, 2*n)
	}
	return nil
}

type upgradeResult struct {
	freeze, pause, post time.Duration
	bytes               int64
}

// upgradeRun starts bin with n open connections, upgrades it rounds times
// through POST /upgrade, and reports medians.
func upgradeRun(bin string, n, rounds int) (upgradeResult, error) {
	var res upgradeResult
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer sink.Close()
	var got atomic.Int64
	var sinkWG sync.WaitGroup
	var mu sync.Mutex
	var sinkConns []net.Conn
	sinkWG.Add(1)
	go func() {
		defer sinkWG.Done()
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			sinkConns = append(sinkConns, c)
			mu.Unlock()
			sinkWG.Add(1)
			go func() {
				defer sinkWG.Done()
				buf := make([]byte, 512)
				for {
					k, err := c.Read(buf)
					got.Add(int64(k))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	defer func() {
		sink.Close()
		mu.Lock()
		for _, c := range sinkConns {
			c.Close()
		}
		mu.Unlock()
		sinkWG.Wait()
	}()

	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--target", sink.Addr().String(), "--proxy-protocol", "none",
		"--admin-listen", "127.0.0.1:0", "--drain-timeout", "0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the whole chain of successors
	logs := make(chan map[string]any, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["level"] != "debug" {
				select {
				case logs <- m:
				default:
				}
			}
		}
		close(logs)
	}()
	next := func(msg string) (map[string]any, error) {
		timeout := time.After(60 * time.Second)
		for {
			select {
			case m, ok := <-logs:
				if !ok {
					return nil, errors.New("bmpproxy exited")
				}
				if m["level"] == "error" {
					return nil, fmt.Errorf("bmpproxy: %v: %v", m["message"], m["error"])
				}
				if m["message"] == msg {
					return m, nil
				}
			case <-timeout:
				return nil, fmt.Errorf("no %q line within 60s", msg)
			}
		}
	}
	ln, err := next("listening")
	if err != nil {
		return res, err
	}
	adm, err := next("admin listening")
	if err != nil {
		return res, err
	}
	addr, admin := ln["addr"].(string), adm["addr"].(string)

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return res, err
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte("a")); err != nil {
			return res, err
		}
	}
	// Wait until every first byte arrived: all connections are set up.
	if !reaches(&got, int64(n)) {
		return res, fmt.Errorf("sink got %d of %d bytes", got.Load(), n)
	}
	time.Sleep(2 * time.Second) // let the idle sweeper park them, as in production

	var freezes, pauses, posts []time.Duration
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	for range rounds {
		start := time.Now()
		resp, err := client.Post("http://"+admin+"/upgrade", "application/json", nil)
		if err != nil {
			return res, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return res, fmt.Errorf("POST /upgrade: %s", resp.Status)
		}
		posts = append(posts, time.Since(start))
		fr, err := next("upgrade: frozen; starting the successor")
		if err != nil {
			return res, err
		}
		pa, err := next("upgrade: the successor took over; letting go")
		if err != nil {
			return res, err
		}
		f, _ := time.ParseDuration(fr["freeze"].(string))
		p, _ := time.ParseDuration(pa["pause"].(string))
		freezes, pauses = append(freezes, f), append(pauses, p)
		time.Sleep(500 * time.Millisecond)
	}
	for _, c := range conns {
		if _, err := c.Write([]byte("b")); err != nil {
			return res, fmt.Errorf("a connection did not survive: %w", err)
		}
	}
	reaches(&got, int64(2*n))
	res.bytes = got.Load()
	if res.bytes != int64(2*n) {
		return res, fmt.Errorf("sink got %d bytes, want %d", res.bytes, 2*n)
	}
	res.freeze, res.pause, res.post = median(freezes), median(pauses), median(posts)
	return res, nil
}

// reaches waits up to a minute for n to reach want, and reports whether
// it did.
func reaches(n *atomic.Int64, want int64) bool {
	for deadline := time.Now().Add(60 * time.Second); n.Load() < want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
