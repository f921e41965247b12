package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/netsetup"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

func transparentSetupCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "transparent-setup",
		Usage: "print, apply or remove the return routing that proxy_protocol: transparent needs",
		UsageText: "bmpproxy transparent-setup --case loopback|namespace|docker [--mark N] [--table N] [--apply|--remove]\n\n" +
			"Without --apply or --remove, the commands are printed. --apply is idempotent; --remove undoes it.\n" +
			"Run it in the network namespace where bmpproxy runs.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "case", Usage: "where the collector is: loopback (this host), namespace (another netns routed through this one) or docker (a bridge network)", Value: "namespace"},
			&cli.IntFlag{Name: "mark", Usage: "the transparent_mark of the listeners; replies are marked mark+1", Value: 1},
			&cli.IntFlag{Name: "table", Usage: "the routing table that delivers replies locally", Value: 100},
			&cli.BoolFlag{Name: "apply", Usage: "apply the commands"},
			&cli.BoolFlag{Name: "remove", Usage: "remove what --apply added"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("transparent-setup: unexpected argument %q", c.Args().First())
			}
			if c.Int("mark") < 1 || c.Int("mark") > 1<<30 {
				return usagef("transparent-setup: --mark must be 1-%d", 1<<30)
			}
			if c.Int("table") < 1 || c.Int("table") > 252 {
				return usagef("transparent-setup: --table must be 1-252")
			}
			if c.Bool("apply") && c.Bool("remove") {
				return usagef("transparent-setup: --apply and --remove exclude each other")
			}
			p, err := netsetup.New(c.String("case"), c.Int("mark"), c.Int("table"))
			if err != nil {
				return usagef("transparent-setup: --case: %v", err)
			}
			switch {
			case c.Bool("apply"):
				return p.Apply(stdout)
			case c.Bool("remove"):
				return p.Remove(stdout)
			}
			p.Print(stdout)
			return nil
		},
	}
}

// applyTransparentSetup applies the configured return routing in this
// network namespace and logs the commands it ran.
func applyTransparentSetup(cfg *conf.Config, log zerolog.Logger) error {
	p, err := netsetup.New(cfg.TransparentSetup, int(cfg.TransparentMark()), cfg.TransparentTable)
	if err != nil {
		return fmt.Errorf("transparent_setup: %w", err)
	}
	var out strings.Builder
	if err := p.Apply(&out); err != nil {
		return fmt.Errorf("transparent_setup %s: %w", cfg.TransparentSetup, err)
	}
	log.Info().Str("case", cfg.TransparentSetup).Str("commands", strings.TrimSpace(out.String())).Msg("transparent return routing in place")
	return nil
}
