package main

import (
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/bmpproxy/bmpproxy/inspect"
	"github.com/bmpproxy/bmpproxy/internal/socket"
	"github.com/urfave/cli/v2"
)

// inspectCommand is a receiver for operators and tests: it prints, for each
// connection, the addresses its PROXY header carried and the BMP messages
// that followed.
func inspectCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "inspect",
		Usage: "receive connections and print the PROXY header and BMP messages each one carried",
		UsageText: "bmpproxy inspect --listen ADDR [--json]\n\n" +
			"Point bmpproxy's --target at it. One line per connection is printed to stdout when the\n" +
			"connection ends: the peer, the PROXY header (v1, v2 or none) with the addresses it carried,\n" +
			"the payload byte count, and for BMP streams the message types seen and the router's\n" +
			"sysName and sysDescr from its Initiation message.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{
				Name:    "listen",
				Aliases: []string{"l"},
				Usage:   "address to accept on; repeat for more ('[::]:P' is dual-stack)",
				Value:   cli.NewStringSlice("[::1]:5001"),
				EnvVars: []string{"BMPPROXY_INSPECT_LISTEN"},
			},
			&cli.BoolFlag{
				Name:  "json",
				Usage: "print one JSON object per connection instead of text",
			},
			&cli.DurationFlag{
				Name:  "header-timeout",
				Usage: "how long to wait for a PROXY header before treating the stream as having none",
				Value: inspect.DefaultHeaderTimeout,
			},
			&cli.StringFlag{
				Name:  "log-level",
				Usage: "one of trace, debug, info, warn, error, disabled",
				Value: conf.DefaultLogLevel,
			},
			&cli.StringFlag{
				Name:  "log-format",
				Usage: "json or console",
				Value: conf.DefaultLogFormat,
			},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("inspect: unexpected argument %q", c.Args().First())
			}
			if c.Duration("header-timeout") <= 0 {
				return usagef("--header-timeout: must be positive, got %s", c.Duration("header-timeout"))
			}
			log, err := newLogger(conf.Log{Level: c.String("log-level"), Format: c.String("log-format")}, stderr)
			if err != nil {
				return usagef("%v", err)
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()

			srv := &inspect.Server{
				Out:           stdout,
				JSON:          c.Bool("json"),
				Logger:        log,
				HeaderTimeout: c.Duration("header-timeout"),
			}
			done := make(chan error)
			n := 0
			for _, s := range c.StringSlice("listen") {
				a, err := conf.ParseListen(s)
				if err != nil {
					stop()
					return usagef("--listen: %v", err)
				}
				ln, err := socket.Listen(ctx, a)
				if err != nil {
					stop()
					for ; n > 0; n-- {
						<-done
					}
					return err
				}
				log.Info().Stringer("addr", ln.Addr()).Msg("listening")
				n++
				go func() { done <- srv.Serve(ctx, ln) }()
			}
			var first error
			for ; n > 0; n-- {
				if err := <-done; err != nil && first == nil {
					first = fmt.Errorf("inspect: %w", err)
					stop()
				}
			}
			return first
		},
	}
}
