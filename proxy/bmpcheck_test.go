package proxy

import (
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"github.com/bmpproxy/bmpproxy/bmp"
)

// TestBMPPrecheck feeds the pre-check captured and hand-built first bytes
// and checks what it lets through, what it learns, and its exact refusals.
func TestBMPPrecheck(t *testing.T) {
	frr, err := os.ReadFile("../bmp/testdata/frr-8.4-bmp-initiation.bin")
	if err != nil {
		t.Fatal(err)
	}
	gobgp, err := os.ReadFile("../bmp/testdata/gobgp-3.10-bmp-initiation.bin")
	if err != nil {
		t.Fatal(err)
	}
	routeMon := []byte{3, 0, 0, 0, 10, 0, 1, 2, 3, 4} // Route Monitoring, 10 bytes
	tests := []struct {
		name     string
		pre      []byte // already read (a trusted proxy's leftovers)
		send     []byte
		close    bool // close after sending
		wantErr  string
		wantName string
		wantTerm string
		wantRead int // bytes returned for forwarding
	}{
		// FRR's capture is its Initiation (36 bytes) and the Peer Up after it:
		// only the first message is read.
		{name: "FRR capture", send: frr, wantName: "edge-r1", wantRead: 36},
		{name: "GoBGP capture", send: gobgp, wantName: "GoBGP", wantRead: -1},
		{name: "built Initiation", send: append(bmp.EncodeInitiation("descr", "edge-1"), 9, 9, 9), wantName: "edge-1", wantRead: len(bmp.EncodeInitiation("descr", "edge-1"))},
		{name: "Initiation split across pre and socket", pre: bmp.EncodeInitiation("d", "edge-2")[:4], send: bmp.EncodeInitiation("d", "edge-2")[4:], wantName: "edge-2", wantRead: len(bmp.EncodeInitiation("d", "edge-2"))},
		{name: "zero TLVs", send: []byte{3, 0, 0, 0, 6, 4}, wantRead: 6},
		{name: "Termination first", send: []byte{3, 0, 0, 0, 12, 5, 0, 1, 0, 2, 0, 4, 0xff}, wantTerm: "permanently-admin-closed", wantRead: 12},
		{name: "route monitoring first", send: routeMon, wantRead: 6},
		{name: "HTTP", send: []byte("GET / HTTP/1.1\r\n\r\n"), wantErr: "not a BMP session: bmp: unsupported version 71 (want 3)"},
		{name: "version 1", send: []byte{1, 0, 0, 0, 6, 4}, wantErr: "not a BMP session: bmp: unsupported version 1 (want 3)"},
		{name: "version 2", send: []byte{2, 0, 0, 0, 6, 4}, wantErr: "not a BMP session: bmp: unsupported version 2 (want 3)"},
		{name: "oversized length", send: []byte{3, 0x7f, 0, 0, 0, 4}, wantErr: "not a BMP session: bmp: invalid message length 2130706432 (want 6..1048576)"},
		{name: "impossible type", send: []byte{3, 0, 0, 0, 6, 200}, wantErr: "not a BMP session: bmp: unknown message type 200"},
		{name: "truncated header", send: []byte{3, 0, 0}, close: true, wantErr: "not a BMP session: closed after 3 bytes"},
		{name: "truncated Initiation", send: bmp.EncodeInitiation("descr", "edge-1")[:12], close: true, wantErr: "not a BMP session: closed after 12 bytes"},
		{name: "silent", wantErr: "not a BMP session: no BMP message within 100ms (0 bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go func() {
				b.Write(tt.send)
				if tt.close {
					b.Close()
				}
			}()
			defer b.Close()
			got, info, err := bmpPrecheck(a, tt.pre, 100*time.Millisecond)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.SysName != tt.wantName || info.TermReason != tt.wantTerm {
				t.Errorf("sysName %q, termination %q; want %q, %q", info.SysName, info.TermReason, tt.wantName, tt.wantTerm)
			}
			want := tt.wantRead
			if want < 0 {
				want = len(tt.send) // a capture of exactly one Initiation
			}
			if len(got) != want || !bytes.Equal(got, append(append([]byte(nil), tt.pre...), tt.send...)[:want]) {
				t.Errorf("returned %d bytes, want the first %d", len(got), want)
			}
		})
	}
}
