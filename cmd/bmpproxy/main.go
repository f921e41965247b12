// Command bmpproxy is a dual-stack TCP proxy for BMP collectors: it
// forwards each connection with a PROXY protocol header carrying the real
// router address, and moves the bytes with splice(2).
package main

import "os"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}
