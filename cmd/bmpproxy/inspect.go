package main

import (
	"io"

	"github.com/urfave/cli/v2"
)

func inspectCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{Name: "inspect", Usage: "receive connections and print the PROXY header and BMP messages they carry"}
}
