package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
)

// The resync cache on its own: bmp/rib fed the full-table-like workload
// (tableSpec) on one core, the figures of issue 17's bounds. `bench
// ribcache` measures it in a process of its own, which the harness runs
// pinned to the proxy core with GOMAXPROCS=1, so that the garbage collector
// shares that one core too, and the heap holds nothing else.

// runRibCache is the ribcache subcommand: it prints one JSON object of
// metrics.
func runRibCache(args []string) error {
	fs := flag.NewFlagSet("ribcache", flag.ExitOnError)
	var spec tableSpec
	spec.flags(fs)
	fs.Parse(args)
	m, err := ribCache(spec)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(m)
}

func (s *tableSpec) flags(fs *flag.FlagSet) {
	fs.IntVar(&s.peers, "table-peers", 8, "peers in the full-table-like workload (resync, ribcache)")
	fs.IntVar(&s.v4, "table-v4", 1_000_000, "IPv4 prefixes per peer in the full-table-like workload")
	fs.IntVar(&s.v6, "table-v6", 200_000, "IPv6 prefixes per peer in the full-table-like workload")
	fs.IntVar(&s.attrSets, "table-attrs", 20_000, "distinct attribute sets in the full-table-like workload, shared out among the peers")
}

// args is s as ribcache flags.
func (s tableSpec) args() []string {
	return []string{
		"-table-peers", strconv.Itoa(s.peers), "-table-v4", strconv.Itoa(s.v4),
		"-table-v6", strconv.Itoa(s.v6), "-table-attrs", strconv.Itoa(s.attrSets),
	}
}

// ribCache feeds one Router the workload, peer by peer in 64 KiB reads as
// from a socket, timing only the feeding; measures the live heap per route
// after a GC; then replays a snapshot into io.Discard.
func ribCache(spec tableSpec) (metrics, error) {
	ps := spec.prefixes()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := rib.NewRouter(rib.NewMemory(0), "bench")
	var fed time.Duration
	for i := range spec.peers {
		var s []byte
		if i == 0 {
			s = initiationMsg("bench", "bmpproxy bench full-table workload")
		}
		s = spec.appendPeer(s, ps, i)
		start := time.Now()
		for b := s; len(b) > 0; {
			n := min(64<<10, len(b))
			r.Feed(b[:n])
			b = b[n:]
		}
		fed += time.Since(start)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st, total := r.Stats(), spec.routes()
	if status := r.Status(); status.State != rib.Keeping {
		return nil, fmt.Errorf("the cache stopped keeping: %w", status.Err)
	}
	if st.Routes != total {
		return nil, fmt.Errorf("%w: the cache holds %d routes, the workload has %d", errMismatch, st.Routes, total)
	}
	m := metrics{
		"ingest_mroutes_per_s": float64(total) / fed.Seconds() / 1e6,
		"heap_b_per_route":     (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(total),
		"acct_b_per_route":     float64(st.Bytes) / float64(total),
		"attr_sets":            float64(st.Attrs),
	}
	snap, err := r.Snapshot()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, snap)
	took := time.Since(start)
	replayed := snap.Routes()
	snap.Close()
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	if replayed != total || n == 0 {
		return nil, fmt.Errorf("%w: the replay carried %d routes in %d bytes, want %d routes", errMismatch, replayed, n, total)
	}
	m["replay_mroutes_per_s"] = float64(total) / took.Seconds() / 1e6
	runtime.KeepAlive(r)
	return m, nil
}

// ribCacheCommand is the ribcache child's command line, pinned to core if
// given.
func ribCacheCommand(spec tableSpec, core string) []string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	argv := append([]string{exe, "ribcache"}, spec.args()...)
	if core != "" {
		argv = append([]string{"taskset", "-c", core}, argv...)
	}
	return argv
}

// ribCacheRun runs the ribcache child and returns its metrics.
func ribCacheRun(argv []string) (metrics, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ribcache: %w\n%s", err, tail(errb.Bytes(), 2000))
	}
	var m metrics
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		return nil, fmt.Errorf("ribcache output %q: %w", tail(out.Bytes(), 200), err)
	}
	if len(m) == 0 {
		return nil, errors.New("ribcache: no metrics")
	}
	return m, nil
}

// ribCacheNote compares the cache's bytes per route with routing daemons',
// as bmp/rib/doc.go cites them.
const ribCacheNote = `Heap: the Go heap after a GC, less before the cache was made; accounted: what the cache charges its
Memory bound (resync_memory). Ingest times only the Feed calls, garbage collection included (one P); replay is a
snapshot of the whole state read into io.Discard. The same workload as bmp/rib's BenchmarkFullTable, from this
harness's own generator.

For comparison, per-route memory of whole routing daemons, measured by others (sources as cited in bmp/rib/doc.go):

| daemon | measured | bytes per route |
|---|---|---|
| BIRD 2.0.8 | 4.4 GB peak, bgperf, 5 neighbours × 1,000,000 prefixes ([gist](https://gist.github.com/jopietsch/e6781c0c61bfa37d91b5a3d08c6939b0)) | about 880 |
| FRR 7.7 | 3.6 GB peak, same bgperf run | about 720 |
| GoBGP 2.28 | 8.4 GB peak, same bgperf run | about 1,700 |
| GoBGP | 1.7 GB RSS for one full table, 2018 ([osrg/gobgp#1665](https://github.com/osrg/gobgp/pull/1665)); about 1 GiB for 820,000 routes, 2020 ([osrg/gobgp#2247](https://github.com/osrg/gobgp/issues/2247)) | 1,300 to 2,300 |
| OpenBGPD | 124 MB for 745,305 prefixes ([pastebin](https://pastebin.com/wPgnz0nD)) | about 170 |

Those daemons keep far more per route (best-path state, parsed attributes, per-route structures): the figures
bound the cost of keeping routes the usual way; they are not a like-for-like race.`
