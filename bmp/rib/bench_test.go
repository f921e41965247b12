package rib

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
)

// The full-table-like workload of the issue: per peer 1,000,000 IPv4 and
// 200,000 IPv6 prefixes, 8 peers, 20,000 distinct attribute sets. Every
// peer announces the same prefixes (as in a full table) with attribute sets
// of its own (2,500 per peer, so 20,000 in all), IPv4 in the NLRI field and
// IPv6 in MP_REACH_NLRI, UPDATEs packed per attribute set up to 4096 bytes.
const (
	benchV4       = 1_000_000
	benchV6       = 200_000
	benchPeers    = 8
	benchAttrSets = 20_000
)

// benchPrefixes is the prefix set every peer announces, kept compact so
// that it does not distort the heap measurement.
type benchPrefixes struct {
	v4 []uint64 // address<<8 | length
	v6 [][17]byte
}

func makeBenchPrefixes(n4, n6 int) *benchPrefixes {
	rng := rand.New(rand.NewPCG(17, 17))
	p := &benchPrefixes{v4: make([]uint64, 0, n4), v6: make([][17]byte, 0, n6)}
	seen := map[uint64]bool{}
	for len(p.v4) < n4 {
		bits := []int{24, 24, 24, 24, 24, 23, 22, 22, 21, 20, 19, 18, 16}[rng.IntN(13)]
		a := rng.Uint32() &^ (1<<(32-bits) - 1)
		k := uint64(a)<<8 | uint64(bits)
		if !seen[k] {
			seen[k] = true
			p.v4 = append(p.v4, k)
		}
	}
	seen6 := map[[17]byte]bool{}
	for len(p.v6) < n6 {
		bits := []int{48, 48, 48, 48, 44, 40, 36, 32, 29, 64}[rng.IntN(10)]
		var e [17]byte
		binary.BigEndian.PutUint64(e[:], 0x2000_0000_0000_0000|rng.Uint64()>>4)
		binary.BigEndian.PutUint64(e[8:], rng.Uint64())
		for i := bits; i < 128; i++ {
			e[i/8] &^= 0x80 >> (i % 8)
		}
		e[16] = byte(bits)
		if !seen6[e] {
			seen6[e] = true
			p.v6 = append(p.v6, e)
		}
	}
	return p
}

// peerStream is one peer's Peer Up and full table as a BMP byte stream
// (with an Initiation if first), routes shuffled over nattr attribute sets.
func (bp *benchPrefixes) peerStream(peer, nattr int, first bool) ([]byte, int) {
	rng := rand.New(rand.NewPCG(uint64(peer), 3))
	h := peerHdr{addr: fmt.Sprintf("198.51.100.%d", peer+1), as: uint32(65001 + peer), id: fmt.Sprintf("198.51.100.%d", peer+1)}
	var out []byte
	if first {
		out = initiation("bench")
	}
	mpc := [][]byte{capMP(1, 1), capMP(2, 1)}
	out = append(out, peerUp(h, mpc, mpc)...)
	sets := make([][]byte, nattr)
	for i := range sets {
		path := []uint32{uint32(65001 + peer), uint32(64512 + rng.IntN(1000)), uint32(1 + rng.IntN(400000)), uint32(1 + rng.IntN(400000))}
		sets[i] = cat(origin(), asPath(path...), med(uint32(i)), community(uint32(65001+peer)<<16|uint32(i)), community(0xffff0000|uint32(rng.IntN(100))))
	}
	// Assign prefixes to attribute sets, then emit per set.
	by4 := make([][]uint32, nattr)
	for i := range bp.v4 {
		a := rng.IntN(nattr)
		by4[a] = append(by4[a], uint32(i))
	}
	by6 := make([][]uint32, nattr)
	for i := range bp.v6 {
		a := rng.IntN(nattr)
		by6[a] = append(by6[a], uint32(i))
	}
	nh := nextHop(fmt.Sprintf("198.51.100.%d", peer+1))
	var nl []byte
	flush4 := func(a int) {
		out = append(out, rm(h, update(nil, cat(sets[a], nh), nl))...)
		nl = nl[:0]
	}
	routes := 0
	for a, idx := range by4 {
		room := stdBGPLen - bgpHdrLen - 4 - len(sets[a]) - len(nh)
		for _, i := range idx {
			k := bp.v4[i]
			bits := int(k & 0xff)
			n := 1 + (bits+7)/8
			if len(nl)+n > room {
				flush4(a)
			}
			l := len(nl)
			nl = append(nl, byte(bits))
			nl = binary.BigEndian.AppendUint32(nl, uint32(k>>8))[:l+n]
			routes++
		}
		if len(nl) > 0 {
			flush4(a)
		}
	}
	nh6 := fmt.Sprintf("2001:db8::%x", peer+1)
	flush6 := func(a int) {
		out = append(out, rm(h, update(nil, cat(mpReach(2, 1, nh6, nl), sets[a]), nil))...)
		nl = nl[:0]
	}
	for a, idx := range by6 {
		room := stdBGPLen - bgpHdrLen - 4 - len(sets[a]) - 4 - 3 - 1 - 16 - 1
		for _, i := range idx {
			e := bp.v6[i]
			bits := int(e[16])
			n := 1 + (bits+7)/8
			if len(nl)+n > room {
				flush6(a)
			}
			nl = append(nl, byte(bits))
			nl = append(nl, e[:(bits+7)/8]...)
			routes++
		}
		if len(nl) > 0 {
			flush6(a)
		}
	}
	out = append(out, rm(h, update(nil, nil, nil))...)
	out = append(out, rm(h, update(nil, mpUnreach(2, 1), nil))...)
	return out, routes
}

// feedChunks feeds s in 64 KiB reads, as from a socket.
func feedChunks(r *Router, s []byte) {
	for len(s) > 0 {
		n := min(64<<10, len(s))
		r.Feed(s[:n])
		s = s[n:]
	}
}

// BenchmarkIngest feeds one peer's full table (1.2 million routes) per
// iteration. Run with -cpu 1 for the one-core figure.
func BenchmarkIngest(b *testing.B) {
	bp := makeBenchPrefixes(benchV4, benchV6)
	s, routes := bp.peerStream(0, benchAttrSets/benchPeers, true)
	b.SetBytes(int64(len(s)))
	b.ResetTimer()
	for range b.N {
		r := NewRouter(nil, "bench")
		feedChunks(r, s)
		if st := r.Status(); st.State != Keeping {
			b.Fatal(st.Err)
		}
	}
	b.ReportMetric(float64(routes)*float64(b.N)/b.Elapsed().Seconds(), "routes/s")
}

// BenchmarkFullTable measures the live heap per cached route after
// ingesting the whole workload (9.6 million routes) and a GC.
func BenchmarkFullTable(b *testing.B) {
	bp := makeBenchPrefixes(benchV4, benchV6)
	for range b.N {
		b.StopTimer()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := NewRouter(NewMemory(0), "bench")
		total := 0
		var ingest float64
		for p := range benchPeers {
			s, n := bp.peerStream(p, benchAttrSets/benchPeers, p == 0)
			b.StartTimer()
			feedChunks(r, s)
			b.StopTimer()
			total += n
		}
		ingest = b.Elapsed().Seconds()
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := r.Stats()
		if r.Status().State != Keeping || st.Routes != total {
			b.Fatalf("status %v, %d routes (want %d)", r.Status(), st.Routes, total)
		}
		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(heap/float64(total), "heap-bytes/route")
		b.ReportMetric(float64(st.Bytes)/float64(total), "accounted-bytes/route")
		b.ReportMetric(float64(total), "routes")
		b.ReportMetric(float64(st.Attrs), "attr-sets")
		b.ReportMetric(float64(total)/ingest, "routes/s")
		runtime.KeepAlive(r)
	}
}

// BenchmarkReplay replays one peer's full table (1.2 million routes) into
// io.Discard per iteration.
func BenchmarkReplay(b *testing.B) {
	bp := makeBenchPrefixes(benchV4, benchV6)
	s, routes := bp.peerStream(0, benchAttrSets/benchPeers, true)
	r := NewRouter(nil, "bench")
	feedChunks(r, s)
	var n int64
	b.ResetTimer()
	for range b.N {
		snap, err := r.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if n, err = io.Copy(io.Discard, snap); err != nil {
			b.Fatal(err)
		}
		snap.Close()
		r.Feed(nil) // merge
	}
	b.SetBytes(n)
	b.ReportMetric(float64(routes)*float64(b.N)/b.Elapsed().Seconds(), "routes/s")
}

// BenchmarkSaveResume is what an upgrade costs per router with resync:
// one peer's full table (1.2 million routes) saved (to memory, as to the
// memfd) and resumed, per iteration.
func BenchmarkSaveResume(b *testing.B) {
	bp := makeBenchPrefixes(benchV4, benchV6)
	s, routes := bp.peerStream(0, benchAttrSets/benchPeers, true)
	r := NewRouter(nil, "bench")
	feedChunks(r, s)
	var buf bytes.Buffer
	b.ResetTimer()
	for range b.N {
		buf.Reset()
		sv, err := r.Save(&buf)
		if err != nil {
			b.Fatal(err)
		}
		res, err := Resume(nil, "bench", sv, &buf)
		if err != nil {
			b.Fatal(err)
		}
		if res.Stats().Routes != routes {
			b.Fatalf("resumed %d routes, want %d", res.Stats().Routes, routes)
		}
		r.Feed(nil) // merge
	}
	b.ReportMetric(float64(routes)*float64(b.N)/b.Elapsed().Seconds(), "routes/s")
}
