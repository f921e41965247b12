// Command refproxy is the baseline bmpproxy is measured against: what a
// competent engineer writes in an afternoon, and the data path of
// docker-proxy built with a current Go. It accepts, dials, writes a PROXY v2
// header and runs io.Copy both ways (which splices on Linux, holding a pipe
// per direction for the connection's life).
package main

import (
	"flag"
	"io"
	"log"
	"net"

	proxyproto "github.com/pires/go-proxyproto"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	target := flag.String("target", "", "target address")
	flag.Parse()
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
		go handle(c.(*net.TCPConn), *target)
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
