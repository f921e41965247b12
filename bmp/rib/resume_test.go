package rib_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/bmpproxy/bmpproxy/bmp/rib"
	"github.com/bmpproxy/bmpproxy/internal/bmpcheck"
)

// TestSaveResume: a Router saved at any point of a stream, and resumed
// from what Save wrote, stands where the original stands: fed the rest of
// the stream, both save the same replay and the same description, and
// the replay parses (with the independent parser) to the stream's state.
// A Router that stopped keeping resumes stopped, with its reason.
func TestSaveResume(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  bmpcheck.GenConfig
		want rib.State
	}{
		{"plain", bmpcheck.GenConfig{Seed: 1, Prefixes: 600}, rib.Keeping},
		{"terminated", bmpcheck.GenConfig{Seed: 2, Prefixes: 300, Terminate: true}, rib.Keeping},
		{"evpn", bmpcheck.GenConfig{Seed: 3, Prefixes: 300, EVPN: true}, rib.Unkeyable},
		{"malformed", bmpcheck.GenConfig{Seed: 4, Prefixes: 300, Malformed: true}, rib.Failed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := bmpcheck.Encode(bmpcheck.Generate(tc.cfg))
			// Cuts at many points, message boundaries or not.
			for _, cut := range []int{0, 1, 7, len(stream) / 5, len(stream)/3 + 11, len(stream) / 2, len(stream) - 3, len(stream)} {
				orig := rib.NewRouter(nil, "router test")
				orig.Feed(stream[:cut])
				var saved bytes.Buffer
				sv, err := orig.Save(&saved)
				if err != nil {
					t.Fatalf("cut %d: Save: %v", cut, err)
				}
				res, err := rib.Resume(nil, "router test", sv, bytes.NewReader(saved.Bytes()))
				if err != nil {
					t.Fatalf("cut %d: Resume: %v", cut, err)
				}
				if got, want := res.Status().State, orig.Status().State; got != want {
					t.Fatalf("cut %d: resumed %v, want %v", cut, got, want)
				}
				orig.Feed(stream[cut:])
				res.Feed(stream[cut:])
				var a, b bytes.Buffer
				sa, err := orig.Save(&a)
				if err != nil {
					t.Fatal(err)
				}
				sb, err := res.Save(&b)
				if err != nil {
					t.Fatal(err)
				}
				// The replay's order of views is not fixed: equal is the
				// same length and, below, the same parsed state.
				if !reflect.DeepEqual(sa, sb) || a.Len() != b.Len() {
					t.Fatalf("cut %d: after the rest, the resumed Router saves %+v (%d bytes), the original %+v (%d bytes)",
						cut, sb, b.Len(), sa, a.Len())
				}
				if sa.State != tc.want {
					t.Fatalf("cut %d: state %v, want %v", cut, sa.State, tc.want)
				}
				if tc.want != rib.Keeping {
					st := res.Status()
					if st.Err == nil || st.Err.Error() != orig.Status().Err.Error() || st.Reason != orig.Status().Reason {
						t.Fatalf("cut %d: resumed status %+v, want %+v", cut, st, orig.Status())
					}
					if tc.want == rib.Unkeyable && !errors.Is(st.Err, rib.ErrUnkeyable) {
						t.Fatalf("cut %d: %v does not wrap ErrUnkeyable", cut, st.Err)
					}
					if b.Len() != 0 {
						t.Fatalf("cut %d: a stopped Router wrote %d bytes of state", cut, b.Len())
					}
					continue
				}
				want, err := bmpcheck.ParseAll(stream)
				if err != nil {
					t.Fatal(err)
				}
				// A replay carries the state, not the Termination.
				want.Terminated, want.Termination = false, nil
				for who, replay := range map[string][]byte{"original": a.Bytes(), "resumed": b.Bytes()} {
					got, err := bmpcheck.ParseAll(replay)
					if err != nil {
						t.Fatalf("cut %d: the %s Router's replay does not parse: %v", cut, who, err)
					}
					if !want.Equal(got) {
						t.Fatalf("cut %d: the %s Router's replay differs from the stream:\n%s", cut, who, want.Diff(got))
					}
				}
			}
		})
	}
}
