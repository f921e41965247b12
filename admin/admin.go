// Package admin serves bmpproxy's HTTP admin endpoints: Prometheus
// metrics, the live router table, health checks, and the state-changing
// endpoints (POST /upgrade) behind one guard.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/bmpproxy/bmpproxy/pool"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Proxy is what the admin endpoints read from the proxy; *proxy.Server
// implements it. Its methods may be called from any goroutine.
type Proxy interface {
	Stats() proxy.Stats
	ListenerStats() []proxy.ListenerStats
	Routers() []proxy.RouterStatus
	Targets() []proxy.TargetStatus
	Pools() []proxy.PoolStatus
	IsReady() bool
}

// PoolControl drains and undrains pool members; *proxy.Server implements
// it. An empty listener means every pool that has the member.
type PoolControl interface {
	Drain(listener, member string) error
	Undrain(listener, member string) error
}

// Server is the admin listener.
type Server struct {
	Addr   netip.AddrPort
	Proxy  Proxy
	Logger zerolog.Logger
	// Listen opens the listening socket. Nil means socket.Listen.
	Listen func(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	// Ready, if set, is called with the bound address once it accepts.
	Ready func(net.Addr)
	// Version is what GET /version reports.
	Version string
	// Upgrade, if set, serves POST /upgrade: it hands this process over
	// to the binary at its path and returns the successor's pid and
	// version. Nil disables the endpoint.
	Upgrade func(ctx context.Context) (pid int, version string, err error)
	// Pool, if set, serves POST /pool/drain and POST /pool/undrain. Nil
	// disables them.
	Pool PoolControl
	// Token returns the bearer token that the state-changing endpoints
	// require. It is called for each of their requests, so the token may
	// change while serving. A nil func or a nil result means none: they
	// are then served only if Addr is a loopback address.
	Token func() *Token
}

// Handler returns the admin endpoints:
//
//   - GET /metrics: Prometheus text format.
//   - GET /routers: JSON, every open BMP session and the recently closed ones.
//   - GET /healthz: 200 while the process serves HTTP.
//   - GET /readyz: 200 once every listener is open, 503 before and while
//     stopping. The body shows the fd budget, and each target name that
//     does not resolve; neither makes it unready: new connections queue
//     until fds are free, and a collector may come later.
//   - GET /version: JSON, the running binary's version and pid.
//   - POST /upgrade: hand over to the binary at this one's path (see
//     docs/upgrade.md); JSON, the successor's pid and version, or 500 and
//     the reason, with this process still serving. It is state-changing:
//     see handleChange.
//   - POST /pool/drain and POST /pool/undrain, with member=ADDR:PORT and
//     optionally listener=NAME (query or form): a pool member stops taking
//     routers and its routers move elsewhere (with resync, replayed;
//     without, closed to reconnect), or takes them again. JSON, a
//     PoolResult; 404 for a member or listener that is not there, 400 for
//     a malformed one. State-changing: see handleChange.
func (s *Server) Handler() http.Handler {
	mux := Handler(s.Proxy)
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"version": s.Version, "pid": os.Getpid()})
	})
	if s.Upgrade != nil {
		s.handleChange(mux, "/upgrade", func(w http.ResponseWriter, r *http.Request) {
			pid, version, err := s.Upgrade(r.Context())
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, UpgradeResult{Pid: os.Getpid(), Version: s.Version, Error: err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, UpgradeResult{Pid: pid, PreviousPid: os.Getpid(), Version: version})
		})
	}
	if s.Pool != nil {
		for _, drain := range []bool{true, false} {
			path, f := "/pool/drain", s.Pool.Drain
			if !drain {
				path, f = "/pool/undrain", s.Pool.Undrain
			}
			s.handleChange(mux, path, func(w http.ResponseWriter, r *http.Request) {
				res := PoolResult{Listener: r.FormValue("listener"), Member: r.FormValue("member"), Drained: drain}
				if res.Member == "" {
					writeJSON(w, http.StatusBadRequest, ErrorResult{Error: path + " needs member=ADDR:PORT, a member as GET /pool lists it"})
					return
				}
				if err := f(res.Listener, res.Member); err != nil {
					code := http.StatusBadRequest
					if errors.Is(err, pool.ErrUnknownMember) || errors.Is(err, proxy.ErrNoPool) {
						code = http.StatusNotFound
					}
					writeJSON(w, code, ErrorResult{Error: err.Error()})
					return
				}
				s.Logger.Info().Str("remote", r.RemoteAddr).Str("request", "POST "+path).Str("member", res.Member).
					Str("listener", res.Listener).Msg("admin request served")
				writeJSON(w, http.StatusOK, res)
			})
		}
	}
	return mux
}

// PoolResult is the answer to POST /pool/drain and /pool/undrain.
type PoolResult struct {
	Listener string `json:"listener,omitempty"` // empty: every pool with the member
	Member   string `json:"member"`
	Drained  bool   `json:"drained"`
}

// handleChange registers a state-changing endpoint, POST path, behind the
// guard; every such endpoint must be registered here. With a token (see
// Server.Token), a request needs "Authorization: Bearer <token>": 401
// without one, 403 with a wrong one. Without a token, it is served only if
// the listener's address is a loopback address, else 403. Each refusal is
// JSON, an ErrorResult, and is logged without the token presented.
func (s *Server) handleChange(mux *http.ServeMux, path string, h http.HandlerFunc) {
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		code, why := s.authorize(r)
		if code == 0 {
			h(w, r)
			return
		}
		s.Logger.Warn().Str("remote", r.RemoteAddr).Str("request", r.Method+" "+r.URL.Path).
			Int("status", code).Str("reason", why).Msg("admin request refused")
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="bmpproxy"`)
		}
		writeJSON(w, code, ErrorResult{Error: why})
	})
}

// authorize returns 0 if r may change state, else the status to answer
// and why.
func (s *Server) authorize(r *http.Request) (int, string) {
	tok := s.token()
	what := r.Method + " " + r.URL.Path
	if tok == nil {
		if s.Addr.Addr().Unmap().IsLoopback() {
			return 0, ""
		}
		return http.StatusForbidden, fmt.Sprintf("%s is served only on a loopback admin address, and this one is on %s: "+
			"set admin_token_file (--admin-token-file) to allow it with a bearer token", what, s.Addr)
	}
	presented, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return http.StatusUnauthorized, what + " needs the header Authorization: Bearer <token>, with the token in the admin token file"
	}
	if !tok.Matches(presented) {
		return http.StatusForbidden, "the bearer token is not the one in the admin token file"
	}
	return 0, ""
}

// token returns the token the state-changing endpoints require, or nil.
func (s *Server) token() *Token {
	if s.Token == nil {
		return nil
	}
	return s.Token()
}

// bearer returns the token of an Authorization header of the Bearer
// scheme (RFC 6750), whose name is case-insensitive.
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// ErrorResult is the answer to a refused request.
type ErrorResult struct {
	Error string `json:"error"`
}

// UpgradeResult is the answer to POST /upgrade.
type UpgradeResult struct {
	Pid         int    `json:"pid"`                    // the process serving now
	PreviousPid int    `json:"previous_pid,omitempty"` // the process that handed over; 0 if none did
	Version     string `json:"version"`                // Pid's version
	Error       string `json:"error,omitempty"`        // why the upgrade failed
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Handler returns the read-only endpoints: /metrics, /routers, /healthz
// and /readyz.
func Handler(p Proxy) *http.ServeMux {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(p), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /routers", func(w http.ResponseWriter, r *http.Request) {
		routers := p.Routers()
		if routers == nil {
			routers = []proxy.RouterStatus{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"routers": routers})
	})
	mux.HandleFunc("GET /pool", func(w http.ResponseWriter, r *http.Request) {
		pools := p.Pools()
		if pools == nil {
			pools = []proxy.PoolStatus{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"pools": pools})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !p.IsReady() {
			http.Error(w, "not ready: listeners are not open", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
		if st := p.Stats(); st.FDBudget > 0 {
			fmt.Fprintf(w, "fd budget: %d of %d in use", st.FDBudgetInUse, st.FDBudget)
			if st.FDBudgetReached {
				fmt.Fprint(w, "; spent: new connections wait in the listen backlog")
			}
			fmt.Fprintln(w)
		}
		for _, t := range p.Targets() {
			if !t.Resolves {
				fmt.Fprintf(w, "listener %q: target %s does not resolve (%s); its connections fail until it does\n", t.Listener, t.Target, t.Error)
			}
		}
	})
	return mux
}

// Run serves until ctx is done, then shuts the HTTP server down. It
// returns an error only if the address cannot be bound.
func (s *Server) Run(ctx context.Context) error {
	listen := s.Listen
	if listen == nil {
		listen = socket.Listen
	}
	ln, err := listen(ctx, s.Addr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
	}
	s.Logger.Info().Stringer("addr", ln.Addr()).Msg("admin listening")
	if s.token() == nil && !s.Addr.Addr().Unmap().IsLoopback() {
		s.Logger.Info().Stringer("addr", ln.Addr()).
			Msg("admin: POST /upgrade is refused on this address, which is not loopback; admin_token_file (--admin-token-file) allows it with a token")
	}
	if s.Ready != nil {
		s.Ready(ln.Addr())
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	<-done
	return nil
}
