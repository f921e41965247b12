package splice

import (
	"fmt"
	"io"
	"net"
	"testing"
)

// BenchmarkCopy streams messages of each size through one direction of a
// loopback rig (client → [in → out] → sink), comparing the Pump's splice
// path, its copy path, and the standard library's io.Copy between two
// TCPConns (which splices through a pipe held for the whole copy) in the
// same run. Compare with benchstat or by the MB/s column.
func BenchmarkCopy(b *testing.B) {
	sizes := []int{64, 1 << 10, 16 << 10, 64 << 10, 1 << 20}
	engines := []struct {
		name string
		copy func(p *Pump, dst, src *net.TCPConn) error
		cfg  Config
	}{
		{name: "io.Copy", copy: func(_ *Pump, dst, src *net.TCPConn) error {
			_, err := io.Copy(dst, src)
			dst.CloseWrite()
			return err
		}},
		{name: "splice", copy: func(p *Pump, dst, src *net.TCPConn) error { return p.Copy(dst, src, nil) }},
		{name: "copy", cfg: Config{Disabled: true}, copy: func(p *Pump, dst, src *net.TCPConn) error { return p.Copy(dst, src, nil) }},
	}
	for _, size := range sizes {
		for _, e := range engines {
			b.Run(fmt.Sprintf("size=%s/%s", sizeName(size), e.name), func(b *testing.B) {
				p := New(e.cfg)
				defer p.Close()
				r := newRig(b)
				done := make(chan error, 1)
				go func() { done <- e.copy(p, r.out, r.in) }()
				msg := make([]byte, size)
				go func() {
					for i := 0; i < b.N; i++ {
						if _, err := r.client.Write(msg); err != nil {
							return
						}
					}
					r.client.CloseWrite()
				}()
				b.SetBytes(int64(size))
				b.ResetTimer()
				buf := make([]byte, 1<<20)
				var got int64
				want := int64(b.N) * int64(size)
				for got < want {
					n, err := r.sink.Read(buf)
					got += int64(n)
					if err != nil {
						b.Fatalf("sink read after %d of %d bytes: %v", got, want, err)
					}
				}
				b.StopTimer()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
