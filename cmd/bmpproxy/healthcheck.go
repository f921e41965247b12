package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// defaultHealthURL is the admin listener of the shipped examples and
// manifests (admin: 127.0.0.1:9180).
const defaultHealthURL = "http://127.0.0.1:9180/healthz"

// healthcheckCommand asks a running bmpproxy's admin listener whether it
// is healthy. Container images have no curl: the Dockerfile's HEALTHCHECK
// runs this.
func healthcheckCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "healthcheck",
		Usage: "ask a running bmpproxy's admin listener for /healthz (for a container HEALTHCHECK)",
		UsageText: "bmpproxy healthcheck [--url " + defaultHealthURL + "]\n\n" +
			"Exit status 0: the URL answered 200. Exit status 1: it did not, or did not answer in time;\n" +
			"the reason is printed to stderr.",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "url",
				Usage:   "admin URL to GET; use /readyz to also require every listener open",
				Value:   defaultHealthURL,
				EnvVars: []string{"BMPPROXY_HEALTHCHECK_URL"},
			},
			&cli.DurationFlag{
				Name:  "timeout",
				Usage: "how long to wait for the answer",
				Value: 2 * time.Second,
			},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("healthcheck: unexpected argument %q", c.Args().First())
			}
			url := c.String("url")
			if !strings.HasPrefix(url, "http://") {
				return usagef("healthcheck: --url must start with http://, got %q", url)
			}
			if c.Duration("timeout") <= 0 {
				return usagef("healthcheck: --timeout must be positive")
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return usagef("healthcheck: --url: %v", err)
			}
			resp, err := directHTTPClient(c.Duration("timeout")).Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck: %s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
			}
			fmt.Fprintf(stdout, "%s: %s\n", url, strings.TrimSpace(string(body)))
			return nil
		},
	}
}

// directHTTPClient is the client for a bmpproxy's admin listener. It
// never goes through a proxy named by HTTP_PROXY and the like: the admin
// address is local to the host or its network namespace, and a proxy
// elsewhere cannot reach it. One connection per request, bounded by
// timeout.
func directHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
}
