package conf

import (
	"bytes"

	"go.yaml.in/yaml/v3"
)

// The file form of a Config, for printing the effective configuration.
// Field order is the order of the printed keys.
type (
	fileConfig struct {
		Admin          string         `yaml:"admin,omitempty"`
		AdminTokenFile string         `yaml:"admin_token_file,omitempty"`
		DrainTimeout   string         `yaml:"drain_timeout"`
		Log            fileLog        `yaml:"log"`
		Splice         fileSplice     `yaml:"splice"`
		Listeners      []fileListener `yaml:"listeners"`
	}
	fileLog struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	}
	fileSplice struct {
		Disabled bool `yaml:"disabled"`
		MaxPipes int  `yaml:"max_pipes,omitempty"`
	}
	fileListener struct {
		Name               string        `yaml:"name"`
		Listen             []string      `yaml:"listen"`
		Target             string        `yaml:"target"`
		ProxyProtocol      string        `yaml:"proxy_protocol"`
		Allow              []string      `yaml:"allow,omitempty"`
		AcceptProxyFrom    []string      `yaml:"accept_proxy_from,omitempty"`
		ProxyHeaderTimeout string        `yaml:"proxy_header_timeout,omitempty"`
		MaxConnections     int           `yaml:"max_connections"`
		ConnectTimeout     string        `yaml:"connect_timeout"`
		TCPKeepAlive       fileKeepAlive `yaml:"tcp_keepalive"`
		Log                fileLog       `yaml:"log"`
		BMP                bool          `yaml:"bmp"`
		BMPTimeout         string        `yaml:"bmp_timeout,omitempty"`
	}
	fileKeepAlive struct {
		Enabled  bool   `yaml:"enabled"`
		Idle     string `yaml:"idle,omitempty"`
		Interval string `yaml:"interval,omitempty"`
		Count    int    `yaml:"count,omitempty"`
	}
)

// YAML returns c in the configuration file format, every setting spelled
// out. Loading the result gives c back.
func (c *Config) YAML() ([]byte, error) {
	f := fileConfig{
		DrainTimeout: c.DrainTimeout.String(),
		Log:          fileLog(c.Log),
		Splice:       fileSplice{Disabled: c.Splice.Disabled, MaxPipes: c.Splice.MaxPipes},
	}
	f.AdminTokenFile = c.AdminTokenFile
	if c.Admin.IsValid() {
		f.Admin = c.Admin.String()
	}
	for _, l := range c.Listeners {
		fl := fileListener{
			Name:           l.Name,
			Target:         l.Target.String(),
			ProxyProtocol:  string(l.ProxyProtocol),
			MaxConnections: l.MaxConnections,
			ConnectTimeout: l.ConnectTimeout.String(),
			TCPKeepAlive:   fileKeepAlive{Enabled: !l.KeepAlive.Disabled},
			Log:            fileLog(l.Log),
		}
		for _, a := range l.Listen {
			fl.Listen = append(fl.Listen, a.String())
		}
		if fl.BMP = l.BMPCheck(); fl.BMP {
			fl.BMPTimeout = l.BMPTimeout.String()
		}
		for _, p := range l.Allow {
			fl.Allow = append(fl.Allow, p.String())
		}
		for _, p := range l.AcceptProxyFrom {
			fl.AcceptProxyFrom = append(fl.AcceptProxyFrom, p.String())
		}
		if len(l.AcceptProxyFrom) > 0 {
			fl.ProxyHeaderTimeout = l.ProxyHeaderTimeout.String()
		}
		if ka := l.KeepAlive; !ka.Disabled {
			fl.TCPKeepAlive.Idle = ka.Idle.String()
			fl.TCPKeepAlive.Interval = ka.Interval.String()
			fl.TCPKeepAlive.Count = ka.Count
		}
		f.Listeners = append(f.Listeners, fl)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
