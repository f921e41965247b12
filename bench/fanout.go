package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// Fan-out: bmpproxy sends one bulk router stream to n sinks, and its
// throughput and CPU per GiB are compared with bmpproxy's to one of them,
// measured in the same run, and with the tee floor (refproxy -tee): the
// fewest system calls that fan a stream out, which shows what the kernel
// charges per leg. The sinks are the fan-out sinks (env.fanSinks),
// which discard without copying, so that the load core, which runs the
// client and every sink, pays for one copy however many legs there are.

// bmpproxyToSinks is the row of bmpproxy with the first k fan-out sinks
// (env.fanSinks) as its targets, no resync, the router paced at rate
// bits/s (0: as fast as bmpproxy takes it).
func bmpproxyToSinks(k int, rate float64) *peer {
	name := "bmpproxy, 1 target"
	if k > 1 {
		name = fmt.Sprintf("bmpproxy, %d targets", k)
	}
	if rate > 0 {
		name += fmt.Sprintf(", router at %g Gbit/s", rate/1e9)
	}
	return &peer{
		name: name, header: headerV2,
		start: func(e *env) (*running, error) {
			if len(e.fanSinks) < k {
				return nil, fmt.Errorf("%d fan-out sinks, %d needed", len(e.fanSinks), k)
			}
			args := []string{"--listen", "127.0.0.1:%PORT%", "--log-level", "warn"}
			for _, s := range e.fanSinks[:k] {
				args = append(args, "--target", s)
			}
			r, err := launch(e, fmt.Sprintf("bmpproxy-fanout%d", k), nil, false, e.bmpproxy, args...)
			if err == nil {
				r.sinks, r.rate = e.fanSinks[:k], rate
			}
			return r, err
		},
	}
}

// fanoutPeers are the rows of a fan-out workload: bmpproxy with one
// target and with n, no resync, each with the router sending as fast as
// bmpproxy takes it, and paced at rate bits/s (0: no paced rows).
func fanoutPeers(n int, rate float64) []*peer {
	floor := func(k int) *peer {
		name := "tee floor, 1 target"
		if k > 1 {
			name = fmt.Sprintf("tee floor, %d targets", k)
		}
		return &peer{
			name: name, header: headerV2,
			start: func(e *env) (*running, error) {
				if len(e.fanSinks) < k {
					return nil, fmt.Errorf("%d fan-out sinks, %d needed", len(e.fanSinks), k)
				}
				args := []string{"-tee", "-listen", "127.0.0.1:%PORT%"}
				for _, s := range e.fanSinks[:k] {
					args = append(args, "-target", s)
				}
				r, err := launch(e, fmt.Sprintf("teefloor%d", k), nil, false, e.refproxy, args...)
				if err == nil {
					r.sinks = e.fanSinks[:k]
				}
				return r, err
			},
		}
	}
	ps := []*peer{bmpproxyToSinks(1, 0), bmpproxyToSinks(n, 0), floor(1), floor(n)}
	if rate > 0 {
		ps = append(ps, bmpproxyToSinks(1, rate), bmpproxyToSinks(n, rate))
	}
	return ps
}

// fanBulk sends n bytes on one stream through the proxy, at t.rate bits/s
// (0: as fast as the proxy takes them), then asks each of t.sinks for the
// count it received, and reports throughput to the moment the last sink
// has counted its bytes. A sink that got fewer bytes (its leg was cut)
// does not end the run: legs_intact counts the sinks that got all.
func fanBulk(t target, n int64) (metrics, error) {
	if len(t.sinks) == 0 {
		return nil, fmt.Errorf("no fan-out sinks to ask (bench load: -sinks)")
	}
	cpu, err := startCPU(t.pid)
	if err != nil {
		return nil, err
	}
	buf := pattern(1 << 20)
	start := time.Now()
	c, err := fanStream(t, n, buf, t.rate)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	key := c.LocalAddr().String()
	intact, least := 0, n
	for i, s := range t.sinks {
		got, err := querySink(s, key)
		if err != nil {
			return nil, fmt.Errorf("fan-out sink %d (%s): %w", i, s, err)
		}
		if got == n {
			intact++
		}
		least = min(least, got)
	}
	elapsed := time.Since(start)
	// Every collector has all it will get: bmpproxy must now end the
	// router session (the primary's reply, or nothing if its leg was
	// cut, then EOF).
	c.SetReadDeadline(time.Now().Add(sessionEnd))
	_, err = io.Copy(io.Discard, c)
	m := metrics{
		"gbps":        float64(n) * 8 / elapsed.Seconds() / 1e9,
		"legs_intact": float64(intact),
		"least_mib":   float64(least) / (1 << 20),
		"closed":      boolf(err == nil),
	}
	used, ok, err := cpu.stop()
	if err != nil {
		return nil, err
	}
	if ok {
		m["cpu_per_gib"] = used.Seconds() / (float64(n) / gib)
	}
	return m, nil
}

// sessionEnd is how long bmpproxy may take to end a fan-out router
// session once every collector has counted its bytes.
const sessionEnd = 10 * time.Second

// fanStream sends n bytes in modeFanout, at rate bits/s if not 0, and
// closes its write side. It returns the connection, whose local address
// is the key under which every sink records its count.
func fanStream(t target, n int64, buf []byte, rate float64) (*net.TCPConn, error) {
	c, err := dial(t)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	if _, err := c.Write(preamble(modeFanout, t.header, c.LocalAddr().String())); err != nil {
		c.Close()
		return nil, err
	}
	start := time.Now()
	for sent := int64(0); sent < n; {
		if rate > 0 {
			// Paced: sleep until the bytes sent so far are due.
			if ahead := time.Duration(float64(sent)*8/rate*1e9) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		m := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:m]); err != nil {
			c.Close()
			return nil, err
		}
		sent += m
	}
	c.CloseWrite()
	return c, nil
}

// querySink asks the sink at addr, directly, for the count of the
// modeFanout stream from key.
func querySink(addr, key string) (int64, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write(preamble(modeQuery, headerNone, key)); err != nil {
		return 0, err
	}
	var reply [9]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return 0, fmt.Errorf("reading the count: %w", err)
	}
	if reply[8] != statusOK {
		return 0, fmt.Errorf("%w: no good stream from %s (status %c)", errMismatch, key, reply[8])
	}
	return int64(binary.BigEndian.Uint64(reply[:8])), nil
}
