package main

import (
	"fmt"
	"io"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/urfave/cli/v2"
)

// checkCommand validates a configuration file without serving it.
func checkCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "validate a configuration file and print it with every default filled in",
		UsageText: "bmpproxy check --config FILE\n\n" +
			"Exit status 0: the file is valid, and the effective configuration is printed to stdout.\n" +
			"Exit status 1: every problem is printed to stderr, one per line, with its line number.",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "config",
				Aliases: []string{"c"},
				Usage:   "YAML configuration file (required)",
				EnvVars: []string{"BMPPROXY_CONFIG"},
			},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("check: unexpected argument %q", c.Args().First())
			}
			if c.String("config") == "" {
				return usagef("check: --config is required, for example bmpproxy check --config bmpproxy.yaml")
			}
			cfg, err := conf.Load(c.String("config"))
			if err != nil {
				return err // exit 1: the file is wrong, not the invocation
			}
			out, err := cfg.YAML()
			if err != nil {
				return fmt.Errorf("print config: %w", err)
			}
			fmt.Fprintf(stdout, "# %s: valid\n%s", c.String("config"), out)
			return nil
		},
	}
}
