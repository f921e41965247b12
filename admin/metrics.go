package admin

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the proxy's counters at each scrape. One metric per
// thing: a refusal is counted only in connections_refused_total, by reason.
type collector struct {
	p Proxy
	// descs holds every descriptor below, for Describe; newCollector
	// fills both at once, so they cannot drift apart.
	descs []*prometheus.Desc

	accepted, refused, active, bytes, connectFailures, dataPath,
	pipesInUse, pipesIdle, parked, reloads, reloadFailures, acceptErrors,
	upgrades, upgradeFailures, carriedOver, fdBudget, fdBudgetInUse, targetResolves,
	legsUp, legCuts, legReconnects, legDialFailures, legReplays, legReplaySeconds, legBytes, legDiscarded,
	resyncRoutes, resyncBytes, resyncStopped, resyncMemory, resyncMemoryLimit,
	memberUp, memberDrained, memberRouters, memberHealthChanges, memberProbeFailures, memberDialFailures,
	memberLegFailures, poolMoves, routerDials, routerDialFailures *prometheus.Desc
}

func newCollector(p Proxy) *collector {
	c := &collector{p: p}
	d := func(dst **prometheus.Desc, name, help string, labels ...string) {
		*dst = prometheus.NewDesc("bmpproxy_"+name, help, labels, nil)
		c.descs = append(c.descs, *dst)
	}
	d(&c.accepted, "connections_accepted_total", "Connections accepted.", "listener")
	d(&c.refused, "connections_refused_total", "Connections closed before dialing the target, by reason.", "listener", "reason")
	d(&c.active, "connections_active", "Connections open now.", "listener")
	d(&c.bytes, "bytes_total", "Payload bytes, by direction: from_client or to_client.", "listener", "direction")
	d(&c.connectFailures, "connect_failures_total", "Connections closed because the target could not be reached.", "listener")
	d(&c.dataPath, "data_path_bytes_total", "Payload bytes by how they moved: splice or copy.", "listener", "path")
	d(&c.pipesInUse, "pipes_in_use", "Kernel pipes held by directions with bytes in flight.")
	d(&c.pipesIdle, "pipes_idle", "Kernel pipes kept open for reuse.")
	d(&c.parked, "directions_parked", "Idle directions parked without a goroutine.")
	d(&c.reloads, "reloads_total", "Configuration reloads applied in full.")
	d(&c.reloadFailures, "reload_failures_total", "Configuration reloads rejected or applied in part.")
	d(&c.acceptErrors, "accept_errors_total", "Failed accept calls, such as EMFILE.")
	d(&c.upgrades, "upgrades_total", "Upgrades that handed every socket to a new process, counted across upgrades.")
	d(&c.upgradeFailures, "upgrade_failures_total", "Upgrades that failed; the running process kept serving.")
	d(&c.carriedOver, "sessions_carried_over_total", "Connections handed to a new process by upgrades, summed over upgrades.")
	d(&c.fdBudget, "fd_budget", "File descriptors connections and pipes may hold: RLIMIT_NOFILE less those open at start and a reserve.")
	d(&c.targetResolves, "target_resolves", "1 if the listener's target is an address or a name that resolved when last tried (at start, on reload, at each dial), 0 if it did not.", "listener", "target")
	d(&c.legsUp, "legs_up", "Router sessions whose leg to this target is live now.", "listener", "target")
	d(&c.legCuts, "leg_cuts_total", "Legs cut for falling their buffer behind, or for taking nothing while behind.", "listener", "target")
	d(&c.legReconnects, "leg_reconnects_total", "Legs dialed again, and connected, after they went down (resync).", "listener", "target")
	d(&c.legDialFailures, "leg_dial_failures_total", "Dials of a leg that failed, at a session's start or on a retry.", "listener", "target")
	d(&c.legReplays, "leg_replays_total", "Replays of a router's state to a leg that (re)connected (resync).", "listener", "target")
	d(&c.legReplaySeconds, "leg_replay_seconds_total", "Time spent replaying, summed over the replays that finished.", "listener", "target")
	d(&c.legBytes, "leg_bytes_total", "Bytes written to the collector of this target, headers and replays included.", "listener", "target")
	d(&c.legDiscarded, "leg_discarded_bytes_total", "Bytes a collector other than the primary sent, read and dropped.", "listener", "target")
	d(&c.resyncRoutes, "resync_routes", "Routes kept for resync, over the listener's router sessions.", "listener")
	d(&c.resyncBytes, "resync_bytes", "Bytes the listener's resync state holds, as charged against resync_memory.", "listener")
	d(&c.resyncStopped, "resync_stopped_total", "Router sessions whose state stopped being kept: unkeyable, over resync_memory, or malformed.", "listener")
	d(&c.resyncMemory, "resync_memory_bytes", "Bytes the resync state of the whole process holds.")
	d(&c.resyncMemoryLimit, "resync_memory_limit_bytes", "resync_memory: the bound on resync_memory_bytes.")
	d(&c.memberUp, "pool_member_up", "1 if the pool member is healthy (it accepts a connection within the connect timeout, and its legs are not failing), 0 if not.", "listener", "member")
	d(&c.memberDrained, "pool_member_drained", "1 if the pool member is drained: it takes no routers.", "listener", "member")
	d(&c.memberRouters, "pool_member_routers", "Router sessions on the pool member now.", "listener", "member")
	d(&c.memberHealthChanges, "pool_member_health_changes_total", "Times the pool member went down or came back.", "listener", "member")
	d(&c.memberProbeFailures, "pool_member_probe_failures_total", "Health checks of the pool member that failed.", "listener", "member")
	d(&c.memberDialFailures, "pool_member_dial_failures_total", "Dials of router legs to the pool member that failed.", "listener", "member")
	d(&c.memberLegFailures, "pool_member_leg_failures_total", "Connected router legs to the pool member that failed or were reset.", "listener", "member")
	d(&c.routerDials, "router_dials_total", "Dials of a dial listener's routers (passive BMP stations) that connected.", "listener")
	d(&c.routerDialFailures, "router_dial_failures_total", "Dials of a dial listener's routers that failed; each is retried with backoff.", "listener")
	d(&c.poolMoves, "pool_moves_total", "Routers moved off a pool member, by reason: failover, drain or rebalance.", "listener", "reason")
	d(&c.fdBudgetInUse, "fd_budget_in_use", "File descriptors of the budget held now; at the budget, new connections wait in the listen backlog.")
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, l := range c.p.ListenerStats() {
		counter(c.accepted, float64(l.Accepted), l.Name)
		for reason, n := range l.Refused {
			counter(c.refused, float64(n), l.Name, reason)
		}
		gauge(c.active, float64(l.Active), l.Name)
		counter(c.bytes, float64(l.BytesFromClient), l.Name, "from_client")
		counter(c.bytes, float64(l.BytesToClient), l.Name, "to_client")
		counter(c.connectFailures, float64(l.ConnectFailures), l.Name)
		counter(c.dataPath, float64(l.BytesSpliced), l.Name, "splice")
		counter(c.dataPath, float64(l.BytesCopied), l.Name, "copy")
		for _, g := range l.Legs {
			gauge(c.legsUp, float64(g.Up), l.Name, g.Target)
			counter(c.legCuts, float64(g.Cuts), l.Name, g.Target)
			counter(c.legReconnects, float64(g.Reconnects), l.Name, g.Target)
			counter(c.legDialFailures, float64(g.DialFailures), l.Name, g.Target)
			counter(c.legReplays, float64(g.Replays), l.Name, g.Target)
			counter(c.legReplaySeconds, g.ReplaySeconds, l.Name, g.Target)
			counter(c.legBytes, float64(g.BytesToCollector), l.Name, g.Target)
			counter(c.legDiscarded, float64(g.BytesDiscarded), l.Name, g.Target)
		}
		counter(c.routerDials, float64(l.RouterDials), l.Name)
		counter(c.routerDialFailures, float64(l.RouterDialFails), l.Name)
		if len(l.Legs) > 0 {
			gauge(c.resyncRoutes, float64(l.RoutesCached), l.Name)
			gauge(c.resyncBytes, float64(l.ResyncBytes), l.Name)
			counter(c.resyncStopped, float64(l.ResyncStopped), l.Name)
		}
	}
	for _, p := range c.p.Pools() {
		for reason, n := range p.Moves {
			counter(c.poolMoves, float64(n), p.Listener, reason)
		}
		for _, m := range p.Members {
			a := m.Addr.String()
			gauge(c.memberUp, bool01(m.Healthy), p.Listener, a)
			gauge(c.memberDrained, bool01(m.Drained), p.Listener, a)
			gauge(c.memberRouters, float64(m.Routers), p.Listener, a)
			counter(c.memberHealthChanges, float64(m.HealthChanges), p.Listener, a)
			counter(c.memberProbeFailures, float64(m.ProbeFailures), p.Listener, a)
			counter(c.memberDialFailures, float64(m.DialFailures), p.Listener, a)
			counter(c.memberLegFailures, float64(m.LegFailures), p.Listener, a)
		}
	}
	for _, t := range c.p.Targets() {
		gauge(c.targetResolves, bool01(t.Resolves), t.Listener, t.Target)
	}
	st := c.p.Stats()
	gauge(c.pipesInUse, float64(st.Splice.PipesInUse))
	gauge(c.pipesIdle, float64(st.Splice.PipesIdle))
	gauge(c.parked, float64(st.Parked))
	counter(c.reloads, float64(st.Reloads))
	counter(c.reloadFailures, float64(st.ReloadFailures))
	counter(c.acceptErrors, float64(st.AcceptErrors))
	counter(c.upgrades, float64(st.Upgrades))
	counter(c.upgradeFailures, float64(st.UpgradeFailures))
	counter(c.carriedOver, float64(st.CarriedOver))
	gauge(c.resyncMemory, float64(st.ResyncMemory))
	gauge(c.resyncMemoryLimit, float64(st.ResyncMemoryLimit))
	gauge(c.fdBudget, float64(st.FDBudget))
	gauge(c.fdBudgetInUse, float64(st.FDBudgetInUse))
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
