package proxy

import (
	"bufio"
	"io"
	"net"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp"
	"github.com/bmpproxy/bmpproxy/internal/testtarget"
)

// BenchmarkBulkBMP moves one BMP session of 16 MiB per iteration through
// the proxy, with the BMP pre-check off and on. The pre-check reads only
// the first message, so the two should not differ beyond noise:
//
//	go test -run XXX -bench BulkBMP -count 5 ./proxy
func BenchmarkBulkBMP(b *testing.B) {
	const size = 16 << 20
	ini := bmp.EncodeInitiation("FRRouting 8.4", "edge-1")
	chunk := make([]byte, 256<<10)
	for _, precheck := range []bool{false, true} {
		name := "precheck=off"
		if precheck {
			name = "precheck=on"
		}
		b.Run(name, func(b *testing.B) {
			done := make(chan int64, 1)
			tg := testtarget.New(b, testtarget.V2, func(c *net.TCPConn, r *bufio.Reader) {
				n, _ := io.Copy(io.Discard, r)
				done <- n
			})
			cfg := oneListener(tg.Addr(), "127.0.0.1:0")
			cfg.Listeners[0].BMP = precheck
			ts := startServer(b, cfg, nil)
			b.SetBytes(size)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", ts.addrs[0].String())
				if err != nil {
					b.Fatal(err)
				}
				c.Write(ini)
				for sent := len(ini); sent < size; sent += len(chunk) {
					c.Write(chunk[:min(len(chunk), size-sent)])
				}
				c.(*net.TCPConn).CloseWrite()
				if n := <-done; n != size {
					b.Fatalf("target got %d bytes, want %d", n, size)
				}
				c.Close()
			}
		})
	}
}
