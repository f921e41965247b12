package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Pool: bmpproxy with a pool of 3 members against bmpproxy with one
// target, the same bulk stream through each, measured in the same run.
// The pool picks a member once per router session, at its dial, and
// probes every member each health interval; the bytes then move as with
// one target. The members are the fan-out sinks (env.fanSinks), so both
// rows send to the same kind of collector: the one-target row is the
// fan-out workloads' (bmpproxyToSinks).

// poolPeers are the rows of the pool workload.
func poolPeers() []*peer {
	pooled := &peer{
		name: "bmpproxy, pool of 3", header: headerV2,
		start: func(e *env) (*running, error) {
			if len(e.fanSinks) < 3 {
				return nil, fmt.Errorf("%d sinks, 3 needed for the pool", len(e.fanSinks))
			}
			quoted := make([]string, 3)
			for i, s := range e.fanSinks[:3] {
				quoted[i] = fmt.Sprintf("%q", s)
			}
			cfg := filepath.Join(e.dir, "bmpproxy-pool.yaml")
			conf := fmt.Sprintf(`log:
  level: warn
listeners:
  - listen: "127.0.0.1:%%PORT%%"
    pool:
      targets: [%s]
      proxy_protocol: v2
      health_interval: 1s
`, strings.Join(quoted, ", "))
			return launchWithConfig(e, "bmpproxy-pool", cfg, conf, e.bmpproxy, "--config", cfg)
		},
	}
	return []*peer{bmpproxyToSinks(1, 0), pooled}
}
