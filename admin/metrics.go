package admin

import (
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the proxy's counters at each scrape.
type collector struct {
	p *proxy.Server

	accepted, refused, active, bytes, connectFailures, headerErrors, bmpRejections,
	dataPath, pipesInUse, pipesIdle, parked, reloads, reloadFailures, acceptErrors,
	upgrades, upgradeFailures, carriedOver *prometheus.Desc
}

func newCollector(p *proxy.Server) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("bmpproxy_"+name, help, labels, nil)
	}
	return &collector{
		p:               p,
		accepted:        d("connections_accepted_total", "Connections accepted.", "listener"),
		refused:         d("connections_refused_total", "Connections closed before dialing the target, by reason.", "listener", "reason"),
		active:          d("connections_active", "Connections open now.", "listener"),
		bytes:           d("bytes_total", "Payload bytes, by direction: from_client or to_client.", "listener", "direction"),
		connectFailures: d("connect_failures_total", "Connections closed because the target could not be reached.", "listener"),
		headerErrors:    d("proxy_header_errors_total", "Inbound PROXY headers refused: spoofed, missing or unreadable.", "listener"),
		bmpRejections:   d("bmp_precheck_rejections_total", "Connections refused by the BMP pre-check.", "listener"),
		dataPath:        d("data_path_bytes_total", "Payload bytes by how they moved: splice or copy.", "listener", "path"),
		pipesInUse:      d("pipes_in_use", "Kernel pipes held by directions with bytes in flight."),
		pipesIdle:       d("pipes_idle", "Kernel pipes kept open for reuse."),
		parked:          d("directions_parked", "Idle directions parked without a goroutine."),
		reloads:         d("reloads_total", "Configuration reloads applied in full."),
		reloadFailures:  d("reload_failures_total", "Configuration reloads rejected or applied in part."),
		acceptErrors:    d("accept_errors_total", "Failed accept calls, such as EMFILE."),
		upgrades:        d("upgrades_total", "Upgrades that handed every socket to a new process, counted across upgrades."),
		upgradeFailures: d("upgrade_failures_total", "Upgrades that failed; the running process kept serving."),
		carriedOver:     d("sessions_carried_over_total", "Connections handed to a new process by upgrades, summed over upgrades."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.accepted, c.refused, c.active, c.bytes, c.connectFailures, c.headerErrors,
		c.bmpRejections, c.dataPath, c.pipesInUse, c.pipesIdle, c.parked, c.reloads, c.reloadFailures, c.acceptErrors,
		c.upgrades, c.upgradeFailures, c.carriedOver} {
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
		counter(c.headerErrors, float64(l.Refused[proxy.ReasonHeader]), l.Name)
		counter(c.bmpRejections, float64(l.Refused[proxy.ReasonBMP]), l.Name)
		counter(c.dataPath, float64(l.BytesSpliced), l.Name, "splice")
		counter(c.dataPath, float64(l.BytesCopied), l.Name, "copy")
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
}
