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
	upgrades, upgradeFailures, carriedOver, fdBudget, fdBudgetInUse, targetResolves *prometheus.Desc
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
	}
	for _, t := range c.p.Targets() {
		v := 0.0
		if t.Resolves {
			v = 1
		}
		gauge(c.targetResolves, v, t.Listener, t.Target)
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
	gauge(c.fdBudget, float64(st.FDBudget))
	gauge(c.fdBudgetInUse, float64(st.FDBudgetInUse))
}
