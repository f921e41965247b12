package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bmpproxy/bmpproxy/admin"
	"github.com/bmpproxy/bmpproxy/proxy"
	"github.com/urfave/cli/v2"
)

// poolCommand is "bmpproxy pool": it shows a running bmpproxy's pools, and
// drains or undrains a member, through the admin listener.
func poolCommand(stdout, stderr io.Writer) *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "admin", Usage: "admin listener address of the running bmpproxy, host:port", Required: true},
			&cli.StringFlag{Name: "listener", Usage: "the pool listener's name; unset: every pool that has the member"},
			&cli.StringFlag{
				Name:    "token-file",
				Usage:   "file (mode 0600) with the bearer token of the process's --admin-token-file",
				EnvVars: []string{"BMPPROXY_ADMIN_TOKEN_FILE"},
			},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "how long to wait for the answer"},
		}
	}
	change := func(verb string, drain bool) *cli.Command {
		usage := "stop sending routers to a pool member and move its routers elsewhere (with resync, replayed; without, closed so they reconnect)"
		if !drain {
			usage = "let a drained pool member take routers again; the routers moved away stay where they are unless the pool rebalances"
		}
		return &cli.Command{
			Name:         verb,
			Usage:        usage,
			UsageText:    "bmpproxy pool " + verb + " --admin HOST:PORT [--listener NAME] [--token-file FILE] MEMBER",
			Description:  "MEMBER is the member's address and port, as 'bmpproxy pool status' lists it.",
			Flags:        flags(),
			OnUsageError: onUsageError,
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("pool %s: give one MEMBER, its address and port (bmpproxy pool status lists them)", verb)
				}
				member := c.Args().First()
				if _, err := netip.ParseAddrPort(member); err != nil {
					return usagef("pool %s: member %q: want ADDR:PORT, as 'bmpproxy pool status' lists it: %v", verb, member, err)
				}
				q := url.Values{"member": {member}}
				if l := c.String("listener"); l != "" {
					q.Set("listener", l)
				}
				var r admin.PoolResult
				if err := adminCall(c, http.MethodPost, "/pool/"+verb, q, &r); err != nil {
					return fmt.Errorf("pool %s %s: %w", verb, member, err)
				}
				where := "every pool that has it"
				if r.Listener != "" {
					where = "listener " + r.Listener
				}
				fmt.Fprintf(stdout, "%s %sed (%s)\n", r.Member, verb, where)
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "pool",
		Usage: "show a running bmpproxy's collector pools, or drain and undrain a member",
		Subcommands: []*cli.Command{
			{
				Name:         "status",
				Usage:        "list every pool member: health, drain, routers",
				UsageText:    "bmpproxy pool status --admin HOST:PORT [--listener NAME]",
				Flags:        flags(),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					var r struct {
						Pools []proxy.PoolStatus `json:"pools"`
					}
					if err := adminCall(c, http.MethodGet, "/pool", nil, &r); err != nil {
						return fmt.Errorf("pool status: %w", err)
					}
					w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "LISTENER\tMEMBER\tFROM\tHEALTH\tDRAINED\tROUTERS\tLAST ERROR")
					for _, p := range r.Pools {
						if l := c.String("listener"); l != "" && l != p.Listener {
							continue
						}
						for _, m := range p.Members {
							health := "up"
							if !m.Healthy {
								health = "down"
							}
							fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\t%d\t%s\n", p.Listener, m.Addr, m.From, health, m.Drained, m.Routers, m.LastError)
						}
					}
					return w.Flush()
				},
			},
			change("drain", true),
			change("undrain", false),
		},
	}
}

// adminCall sends method path?q to the admin listener that c's --admin
// names, with c's --token-file's token, and decodes a 200's JSON answer
// into out; another status is an error with the answer's reason.
func adminCall(c *cli.Context, method, path string, q url.Values, out any) error {
	addr := c.String("admin")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return usagef("--admin %q: want host:port with an IP address: %v", addr, err)
	}
	u := "http://" + ap.String() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return err
	}
	if f := c.String("token-file"); f != "" {
		tok, err := admin.ReadTokenFile(f)
		if err != nil {
			return usagef("--token-file: %v", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := directHTTPClient(c.Duration("timeout")).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e admin.ErrorResult
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s answered %s: %s", method, path, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s answered %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}
