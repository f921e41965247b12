// Command refproxy is the baseline bmpproxy is measured against: what a
// competent engineer writes in an afternoon, and the data path of
// docker-proxy built with a current Go. It accepts, dials, writes a PROXY v2
// header and runs io.Copy both ways (which splices on Linux, holding a pipe
// per direction for the connection's life).
//
// With -tee it is instead the floor of a fan-out: every router byte to
// each -target, by the fewest system calls Linux allows (teeFloor).
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"strings"

	proxyproto "github.com/pires/go-proxyproto"
)

// targets is a repeatable -target flag.
type targets []string

func (t *targets) String() string     { return strings.Join(*t, ",") }
func (t *targets) Set(s string) error { *t = append(*t, s); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	var to targets
	flag.Var(&to, "target", "target address (with -tee, repeat it for each leg)")
	tee := flag.Bool("tee", false, "fan out to every -target by tee(2) and blocking splice(2): the floor of a fan-out")
	flag.Parse()
	if len(to) == 0 || len(to) > 1 && !*tee {
		log.Fatal("one -target, or -tee and one or more")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		if *tee {
			go teeFloor(c.(*net.TCPConn), to)
		} else {
			go handle(c.(*net.TCPConn), to[0])
		}
	}
}

func handle(c *net.TCPConn, target string) {
	defer c.Close()
	t, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer t.Close()
	if _, err := proxyproto.HeaderProxyFromAddrs(2, c.RemoteAddr(), c.LocalAddr()).WriteTo(t); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(t, c)
		t.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, t)
	c.CloseWrite()
	<-done
}
