package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/internal/socket"
)

// errNotRunning is returned by Reload when Run is not serving.
var errNotRunning = errors.New("proxy: server is not running")

type reloadReq struct {
	cfg  *conf.Config
	done chan error
}

// Reload applies cfg, complete and valid as for New, to
// the running server and returns when it has been applied. Only the
// difference is applied:
//
//   - An address that is new is opened and served.
//   - An address that is gone stops accepting; its open connections run on
//     until they end by themselves.
//   - An address that stays serves new connections with its listener's new
//     options.
//
// An open connection keeps the options it was accepted with, but for a
// fan-out connection's targets: those of its listener's new options are
// applied to it (retarget.go). If a new address cannot be opened, the addresses its
// listener had before stay open with their old options, and the error is
// returned; the rest of cfg is applied. Splice settings take effect only
// at the next start.
func (s *Server) Reload(ctx context.Context, cfg *conf.Config) error {
	req := reloadReq{cfg: cfg, done: make(chan error, 1)}
	return submit(ctx, s, s.reloads, req, req.done)
}

// submit hands req to the Run goroutine on ch and returns its answer
// from done, or errNotRunning if Run does not serve, or ctx's error if
// ctx ends before Run takes req.
func submit[R any](ctx context.Context, s *Server, ch chan<- R, req R, done <-chan error) error {
	select {
	case ch <- req:
	case <-s.stopped:
		return errNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-done
}

// ReloadFailed records a reload that was rejected before reaching the
// server, such as a configuration file that does not load.
func (s *Server) ReloadFailed(err error) {
	s.stats.reloadFailures.Add(1)
	s.opts.Logger.Error().Err(err).Msg("reload failed; the running configuration stays in force")
}

// apply runs on the Run goroutine.
func (s *Server) apply(ctx, connCtx context.Context, cfg *conf.Config) error {
	old := s.cfg
	if err := checkTransparent(cfg); err != nil {
		s.ReloadFailed(err)
		return err
	}
	var errs []error
	if err := s.syncPools(cfg); err != nil {
		errs = append(errs, err)
	}

	// Open what is new first: if an address cannot be had, the old
	// listener of the same name stays.
	kept := map[netip.AddrPort]bool{}
	failed := map[string]bool{}
	var opened []*listener
	for i := range cfg.Listeners {
		c := &cfg.Listeners[i]
		o := s.newOpts(c)
		for _, a := range c.Listen {
			if l, ok := s.listeners[a]; ok && a.Port() != 0 {
				kept[a] = true
				prev := l.opts.Swap(o) // even unchanged settings get a fresh logger
				if prev.KeepAlive != c.KeepAlive {
					if err := socket.SetKeepAlive(l.ln, socket.KeepAlive(c.KeepAlive)); err != nil {
						errs = append(errs, fmt.Errorf("listener %q: keepalive on %s: %w", c.Name, a, err))
					}
				}
				if !reflect.DeepEqual(prev.Listener, *c) {
					s.opts.Logger.Info().Str("listener", c.Name).Stringer("addr", l.ln.Addr()).
						Str("target", targetsText(c)).Str("proxy_protocol", string(c.ProxyProtocol)).
						Bool("bmp", c.BMP).Msg("listener updated; new connections use the new settings")
				}
				continue
			}
			l, err := s.open(ctx, a, o)
			if err != nil {
				failed[c.Name] = true
				errs = append(errs, err)
				continue
			}
			opened = append(opened, l)
		}
	}
	for a, l := range s.listeners {
		if kept[a] {
			continue
		}
		name := l.opts.Load().Name
		if failed[name] {
			s.opts.Logger.Warn().Str("listener", name).Stringer("addr", l.ln.Addr()).
				Msg("listener kept with its old settings: its new address could not be opened")
			continue
		}
		l.ln.Close()
		l.stopAccepting()
		delete(s.listeners, a)
		s.opts.Logger.Info().Str("listener", name).Stringer("addr", l.ln.Addr()).
			Msg("listener removed; its open connections run on")
	}
	for _, l := range opened {
		s.serve(ctx, connCtx, l)
	}
	if !reflect.DeepEqual(old.Splice, cfg.Splice) {
		s.opts.Logger.Warn().Msg("splice settings changed; they take effect at the next start")
	}
	if old.ResyncMemory != cfg.ResyncMemory {
		s.opts.Logger.Warn().Msg("resync_memory changed; it takes effect at the next start (an upgrade carries the state over)")
	}
	if old.Admin != cfg.Admin {
		s.opts.Logger.Warn().Msg("the admin address changed; it takes effect at the next start")
	}
	s.cfg = cfg
	s.runPools()
	s.syncDialouts(ctx, connCtx, cfg)
	s.retarget(cfg)
	s.checkTargets(cfg)
	s.pruneStates(cfg)
	if err := errors.Join(errs...); err != nil {
		s.stats.reloadFailures.Add(1)
		s.opts.Logger.Error().Err(err).Msg("reload applied in part")
		return err
	}
	s.stats.reloads.Add(1)
	s.opts.Logger.Info().Int("listeners", len(s.listeners)).Msg("reload applied")
	return nil
}
