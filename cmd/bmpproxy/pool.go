package main

import (
	"encoding/json"
	"flag"
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

// defaultAdmin is the admin address the pool subcommands ask unless told
// otherwise: the one the shipped configurations use.
const defaultAdmin = "127.0.0.1:9180"

// poolOpts are the pool subcommands' flags.
type poolOpts struct {
	admin, listener, tokenFile string
	timeout                    time.Duration
}

// poolCommand is "bmpproxy pool": it shows a running bmpproxy's pools, and
// drains or undrains a member, through the admin listener.
func poolCommand(stdout, stderr io.Writer) *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "admin", Value: defaultAdmin, EnvVars: []string{"BMPPROXY_ADMIN"},
				Usage: "admin listener address of the running bmpproxy, host:port"},
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
			Name:      verb,
			Usage:     usage,
			UsageText: "bmpproxy pool " + verb + " MEMBER [--admin HOST:PORT] [--listener NAME] [--token-file FILE]",
			Description: "MEMBER is the member's address and port, as 'bmpproxy pool status' lists it. The flags may\n" +
				"come before or after it.",
			Flags:        flags(),
			OnUsageError: onUsageError,
			Action: func(c *cli.Context) error {
				member, o, err := memberAndFlags(c)
				if err == nil {
					err = o.check()
				}
				if err != nil {
					return usagef("pool %s: %v", verb, err)
				}
				q := url.Values{"member": {member}}
				if o.listener != "" {
					q.Set("listener", o.listener)
				}
				var r admin.PoolResult
				if err := adminCall(o, http.MethodPost, "/pool/"+verb, q, &r); err != nil {
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
				UsageText:    "bmpproxy pool status [--admin HOST:PORT] [--listener NAME]",
				Flags:        flags(),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return usagef("pool status: takes no arguments, got %q", c.Args().Slice())
					}
					o := optsOf(c)
					if err := o.check(); err != nil {
						return usagef("pool status: %v", err)
					}
					var r struct {
						Pools []proxy.PoolStatus `json:"pools"`
					}
					if err := adminCall(o, http.MethodGet, "/pool", nil, &r); err != nil {
						return fmt.Errorf("pool status: %w", err)
					}
					w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "LISTENER\tMEMBER\tFROM\tHEALTH\tDRAINED\tROUTERS\tLAST ERROR")
					for _, p := range r.Pools {
						if o.listener != "" && o.listener != p.Listener {
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

// optsOf reads c's pool flags.
func optsOf(c *cli.Context) poolOpts {
	return poolOpts{admin: c.String("admin"), listener: c.String("listener"), tokenFile: c.String("token-file"), timeout: c.Duration("timeout")}
}

// memberAndFlags returns the one MEMBER of c's arguments and c's flags,
// with the flags given after MEMBER applied over them: urfave/cli stops
// reading flags at the first argument, and an operator writes the member
// first as often as last.
func memberAndFlags(c *cli.Context) (string, poolOpts, error) {
	o := optsOf(c)
	args := c.Args().Slice()
	if len(args) == 0 {
		return "", o, fmt.Errorf("give the MEMBER, its address and port (bmpproxy pool status lists them)")
	}
	member, rest := args[0], args[1:]
	fs := flag.NewFlagSet("pool", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.admin, "admin", o.admin, "")
	fs.StringVar(&o.listener, "listener", o.listener, "")
	fs.StringVar(&o.tokenFile, "token-file", o.tokenFile, "")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	if err := fs.Parse(rest); err != nil {
		return "", o, fmt.Errorf("after MEMBER: %v", err)
	}
	if fs.NArg() > 0 {
		return "", o, fmt.Errorf("one MEMBER only, got %q and %q", member, fs.Args())
	}
	if _, err := netip.ParseAddrPort(member); err != nil {
		return "", o, fmt.Errorf("member %q: want ADDR:PORT, as 'bmpproxy pool status' lists it: %v", member, err)
	}
	return member, o, nil
}

// check reports a flag that cannot work, before anything is asked.
func (o poolOpts) check() error {
	if _, err := netip.ParseAddrPort(o.admin); err != nil {
		return fmt.Errorf("--admin %q: want host:port with an IP address: %v", o.admin, err)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", o.timeout)
	}
	if o.tokenFile != "" {
		if _, err := admin.ReadTokenFile(o.tokenFile); err != nil {
			return fmt.Errorf("--token-file: %v", err)
		}
	}
	return nil
}

// adminCall sends method path?q to the admin listener at o.admin (which
// check accepted), with o.tokenFile's token, and decodes a 200's JSON
// answer into out; another status is an error with the answer's reason.
func adminCall(o poolOpts, method, path string, q url.Values, out any) error {
	u := "http://" + netip.MustParseAddrPort(o.admin).String() + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return err
	}
	if o.tokenFile != "" {
		tok, err := admin.ReadTokenFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := directHTTPClient(o.timeout).Do(req)
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
