package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const gib = 1 << 30

// target is what a workload runs against.
type target struct {
	addr   string
	pid    int // 0: no proxy process to measure
	header byte
	sinks  []string // fan-out: the proxy's targets, each a sink to ask for its count
	// resync workload: the proxy's one target, and whether it keeps state.
	collector *collector
	resync    bool
	rate      float64 // fan-out: bits/s the router sends at; 0: as fast as it can
}

// metrics is one run's measurements, by metric key.
type metrics map[string]float64

// workload is one row group of the results.
type workload struct {
	key, title string
	// unpriv: the workload runs on the unprivileged peers; both: on all.
	peers   peerSet
	columns []column
	run     func(t target, o *options) (metrics, error)
	// own, if set, are the workload's rows instead of the shared peers.
	own []*peer
	// self, if set, is a workload that runs no proxy: a child process
	// measures and reports.
	self *selfRun
	// sinks is how many fan-out sinks the rows need; collector, whether
	// they need the in-process collector.
	sinks     int
	collector bool
	// note is printed under the workload's table.
	note string
}

// selfRun is a workload's one row when it runs no proxy.
type selfRun struct {
	name    string
	command func(e *env) []string
	run     func(argv []string) (metrics, error)
}

type peerSet int

const (
	privileged peerSet = iota
	unprivileged
	everyone
)

// column describes one reported metric.
type column struct {
	key, label string
	format     string
}

func workloads(o *options) []workload {
	bulkCols := []column{
		{"gbps", "Gbit/s", "%.2f"},
		{"cpu_per_gib", "proxy CPU-s/GiB", "%.3f"},
	}
	fanCols := append(bulkCols[:2:2], column{"legs_intact", "legs with every byte", "%.0f"}, column{"least_mib", "least a leg got, MiB", "%.0f"},
		column{"closed", "router session ended", "bool"})
	table := &tableStream{spec: o.table}
	fanoutNote := "The targets are the listeners of one sink process on the load core, which drains them in turns (at most 256 KiB " +
		"from each ready socket per epoll round) with MSG_TRUNC (the kernel drops the bytes, no copy to user space): equally fast " +
		"collectors, and the load core, which runs the router and every sink, pays for one copy however many legs there are. " +
		"Every leg has the default buffer (4 MiB). Throughput runs to the moment the last sink has counted its bytes. " +
		"A leg that bmpproxy cut for falling behind does not stop the run: it shows in the last two columns " +
		"(medians, with min–max), and a row with a leg cut measured fewer legs than it names. " +
		"The paced rows send at a fixed rate (-fanout-rate), below what one target takes. " +
		"Router session ended: bmpproxy closed the router's connection within 10 s of the last sink's count, in every run."
	return []workload{
		{
			key: "bulk1", title: fmt.Sprintf("Bulk, one stream of %s", size(o.bulkSize)), peers: everyone, columns: bulkCols,
			run: func(t target, o *options) (metrics, error) { return bulk(t, 1, o.bulkSize) },
		},
		{
			key: "bulk8", title: fmt.Sprintf("Bulk, 8 streams of %s each", size(o.bulkSize/8)), peers: privileged, columns: bulkCols,
			run: func(t target, o *options) (metrics, error) { return bulk(t, 8, o.bulkSize/8) },
		},
		{
			key: "many", title: fmt.Sprintf("Bulk, %d concurrent streams of %s each, proxy unprivileged", o.manyStreams, size(o.manySize)),
			peers: unprivileged, columns: bulkCols,
			run: func(t target, o *options) (metrics, error) { return bulk(t, o.manyStreams, o.manySize) },
		},
		{
			key: "rr", title: fmt.Sprintf("Request/response, 64 B, %d round trips on one connection", o.rrCount), peers: privileged,
			columns: []column{{"p50_us", "p50 µs", "%.1f"}, {"p99_us", "p99 µs", "%.1f"}},
			run:     func(t target, o *options) (metrics, error) { return requestResponse(t, o.rrCount) },
		},
		{
			key: "short", title: fmt.Sprintf("Short connections: connect, 64 B echo, close; %d connections at concurrency %d", o.shortCount, o.shortConc),
			peers: privileged,
			columns: []column{
				{"conns_per_s", "conn/s", "%.0f"},
				{"p99_us", "p99 µs", "%.0f"},
				{"cpu_per_conn_us", "proxy CPU µs/conn", "%.1f"},
			},
			run: func(t target, o *options) (metrics, error) { return shortConns(t, o.shortCount, o.shortConc) },
		},
		{
			key: "capacity", title: fmt.Sprintf("Capacity: holding %d idle connections under the fd limit", o.capacity), peers: privileged,
			columns: []column{{"held", "connections held", "%.0f"}, {"alive", "proxy still running", "bool"}},
			run:     func(t target, o *options) (metrics, error) { return capacity(t, o.capacity) },
		},
		{
			key: "idle", title: fmt.Sprintf("%d idle connections, measured after 5 s idle", o.idleConns), peers: privileged,
			columns: []column{{"rss_kib_per_conn", "proxy RSS KiB/conn", "%.2f"}, {"fds_per_conn", "proxy fds/conn", "%.2f"}},
			run:     func(t target, o *options) (metrics, error) { return idle(t, o.idleConns) },
		},
		{
			key: "pool3", title: fmt.Sprintf("Pool of 3 members: one stream of %s, no resync", size(o.bulkSize)),
			columns: bulkCols, own: poolPeers(), sinks: 3,
			note: "The members are the listeners of one sink process on the load core, the same as the one target's. " +
				"The pool probes each member every second (a PROXY v2 LOCAL header), and picks a member once per router session.",
			run: func(t target, o *options) (metrics, error) { return bulk(t, 1, o.bulkSize) },
		},
		{
			key: "fanout2", title: fmt.Sprintf("Fan-out: one stream of %s to 2 collectors, no resync", size(o.bulkSize)),
			columns: fanCols, own: fanoutPeers(2, o.fanRate*1e9), sinks: 2, note: fanoutNote,
			run: func(t target, o *options) (metrics, error) { return fanBulk(t, o.bulkSize) },
		},
		{
			key: "fanout4", title: fmt.Sprintf("Fan-out: one stream of %s to 4 collectors, no resync", size(o.bulkSize)),
			columns: fanCols, own: fanoutPeers(4, o.fanRate*1e9), sinks: 4, note: fanoutNote,
			run: func(t target, o *options) (metrics, error) { return fanBulk(t, o.bulkSize) },
		},
		{
			key: "resync",
			title: fmt.Sprintf("Resync: one router's full table (%s) through bmpproxy to one collector, which then restarts",
				o.table),
			columns: []column{
				{"mroutes_per_s", "M routes/s in", "%.2f"},
				{"gbps", "Gbit/s", "%.2f"},
				{"cpu_ns_per_route", "proxy CPU ns/route", "%.0f"},
				{"rss_b_per_route", "proxy RSS growth B/route", "%.1f"},
				{"replay_mroutes_per_s", "replay M routes/s", "%.2f"},
			},
			own: resyncPeers(), collector: true,
			note: "The collector is in the harness, on the load core: it counts routes and End-of-RIBs, so the table has arrived " +
				"at its last End-of-RIB, and each count is checked. Routes in: from the router's first byte to the collector's last. " +
				"Proxy CPU to that moment, from /proc/PID/task/*/schedstat (nanoseconds). RSS growth: VmRSS when the table has arrived, " +
				"less before the router connected. Replay: the collector resets its connection, bmpproxy dials it again " +
				"(after its 1 s backoff) and replays; from the replay's PROXY header to its last End-of-RIB, every route and Peer Up counted.",
			run: func(t target, o *options) (metrics, error) { return resyncRun(t, table) },
		},
		{
			key: "ribcache", title: fmt.Sprintf("Resync cache (bmp/rib) alone on one core: the full table of %s", o.table),
			columns: []column{
				{"ingest_mroutes_per_s", "ingest M routes/s", "%.2f"},
				{"heap_b_per_route", "heap B/route", "%.1f"},
				{"acct_b_per_route", "accounted B/route", "%.1f"},
				{"replay_mroutes_per_s", "replay M routes/s", "%.2f"},
			},
			self: &selfRun{
				name: "bmp/rib, GOMAXPROCS=1",
				command: func(e *env) []string {
					return ribCacheCommand(o.table, e.proxyCore)
				},
				run: ribCacheRun,
			},
			note: ribCacheNote,
		},
	}
}

func size(n int64) string {
	switch {
	case n >= gib && n%gib == 0:
		return fmt.Sprintf("%d GiB", n/gib)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// pattern returns n bytes of a fixed, non-uniform pattern for payloads.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func dial(t target) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", t.addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// bulkStream sends n bytes, written from buf over and over, and checks the
// sink's count.
func bulkStream(t target, n int64, buf []byte) error {
	c, err := dial(t)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	if _, err := c.Write(preamble(modeBulk, t.header, c.LocalAddr().String())); err != nil {
		return err
	}
	for left := n; left > 0; {
		m := min(int64(len(buf)), left)
		if _, err := c.Write(buf[:m]); err != nil {
			return err
		}
		left -= m
	}
	c.CloseWrite()
	var reply [9]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return fmt.Errorf("reading the sink's count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(reply[:8])); got != n || reply[8] != statusOK {
		return fmt.Errorf("%w: sent %d bytes, sink counted %d, status %c", errMismatch, n, got, reply[8])
	}
	return nil
}

// cpuMeter measures the proxy's CPU time over an interval.
type cpuMeter struct {
	pid   int
	start time.Duration
}

func startCPU(pid int) (cpuMeter, error) {
	if pid == 0 {
		return cpuMeter{}, nil
	}
	t, err := cpuTime(pid)
	return cpuMeter{pid: pid, start: t}, err
}

// stop returns the CPU time used since start; NaN without a process.
func (m cpuMeter) stop() (time.Duration, bool, error) {
	if m.pid == 0 {
		return 0, false, nil
	}
	waitNoChildren(m.pid, 2*time.Second) // forked peers: count reaped children
	t, err := cpuTime(m.pid)
	return t - m.start, true, err
}

func bulk(t target, streams int, each int64) (metrics, error) {
	cpu, err := startCPU(t.pid)
	if err != nil {
		return nil, err
	}
	buf := pattern(1 << 20) // read-only, shared by the streams
	start := time.Now()
	errs := make(chan error, streams)
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- bulkStream(t, each, buf)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			return nil, err
		}
	}
	total := float64(streams) * float64(each)
	m := metrics{"gbps": total * 8 / elapsed.Seconds() / 1e9}
	used, ok, err := cpu.stop()
	if err != nil {
		return nil, err
	}
	if ok {
		m["cpu_per_gib"] = used.Seconds() / (total / gib)
	}
	return m, nil
}

func requestResponse(t target, count int) (metrics, error) {
	c, err := dial(t)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := c.Write(preamble(modeEcho, t.header, c.LocalAddr().String())); err != nil {
		return nil, err
	}
	msg := pattern(64)
	buf := make([]byte, 64)
	const warmup = 100
	lat := make([]time.Duration, 0, count)
	for i := 0; i < count+warmup; i++ {
		s := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
		if i >= warmup {
			lat = append(lat, time.Since(s))
		}
	}
	return metrics{"p50_us": us(percentile(lat, 50)), "p99_us": us(percentile(lat, 99))}, nil
}

func shortConns(t target, count, conc int) (metrics, error) {
	cpu, err := startCPU(t.pid)
	if err != nil {
		return nil, err
	}
	var next atomic.Int64
	echo := pattern(64)
	lats := make([][]time.Duration, conc)
	errs := make(chan error, conc)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for next.Add(1) <= int64(count) {
				s := time.Now()
				c, err := dial(t)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				msg := append(preamble(modeEcho, t.header, c.LocalAddr().String()), echo...)
				_, err = c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					errs <- fmt.Errorf("short connection: %w", err)
					return
				}
				lats[w] = append(lats[w], time.Since(s))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	all := slices.Concat(lats...)
	m := metrics{
		"conns_per_s": float64(len(all)) / elapsed.Seconds(),
		"p99_us":      us(percentile(all, 99)),
	}
	used, ok, err := cpu.stop()
	if err != nil {
		return nil, err
	}
	if ok {
		m["cpu_per_conn_us"] = us(used) / float64(len(all))
	}
	return m, nil
}

// idle opens n connections, confirms each end to end with a 1-byte echo,
// lets them go idle, and measures the proxy's RSS and fds per connection.
func idle(t target, n int) (metrics, error) {
	if t.pid == 0 {
		return nil, errors.New("no proxy process")
	}
	// Warm up first, so the baseline holds what a proxy keeps regardless of
	// its connection count (pipe pools, grown heaps).
	if _, err := shortConns(target{addr: t.addr, header: t.header}, 256, 32); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(200 * time.Millisecond)
	rss0, fds0, err := footprint(t.pid)
	if err != nil {
		return nil, err
	}
	conns := make([]*net.TCPConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := openConfirmed(t, 30*time.Second)
				if err != nil {
					errs <- fmt.Errorf("idle connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	time.Sleep(5 * time.Second) // idle for 5 s: long enough for proxies that park idle connections
	rss1, fds1, err := footprint(t.pid)
	if err != nil {
		return nil, err
	}
	return metrics{
		"rss_kib_per_conn": float64(rss1-rss0) / float64(n),
		"fds_per_conn":     float64(fds1-fds0) / float64(n),
	}, nil
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// openConfirmed dials t and confirms the connection end to end with a
// 1-byte echo, all within timeout. The connection is left without deadline.
func openConfirmed(t target, timeout time.Duration) (*net.TCPConn, error) {
	nc, err := net.DialTimeout("tcp", t.addr, timeout)
	if err != nil {
		return nil, err
	}
	c := nc.(*net.TCPConn)
	c.SetDeadline(time.Now().Add(timeout))
	_, err = c.Write(append(preamble(modeEcho, t.header, c.LocalAddr().String()), 'x'))
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, 1))
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// capacity opens up to n connections, each confirmed end to end, until n
// are held or the proxy stops taking them (64 failures, or 2 minutes). It
// reports how many were held and whether the proxy process survived.
func capacity(t target, n int) (metrics, error) {
	if t.pid == 0 {
		return nil, errors.New("no proxy process")
	}
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var mu sync.Mutex
	var failures, attempts atomic.Int64
	deadline := time.Now().Add(2 * time.Minute)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for failures.Load() < 64 && time.Now().Before(deadline) && attempts.Add(1) <= int64(n) {
				c, err := openConfirmed(t, 3*time.Second)
				if err != nil {
					failures.Add(1)
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Held means still open end to end now, not merely accepted once.
	held := 0
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		buf := []byte{'y'}
		if _, err := c.Write(buf); err == nil {
			if _, err := io.ReadFull(c, buf); err == nil {
				held++
			}
		}
	}
	return metrics{"held": float64(held), "alive": boolf(processAlive(t.pid))}, nil
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
