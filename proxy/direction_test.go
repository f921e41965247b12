package proxy

import (
	"strings"
	"testing"
)

// TestDirectionTransitions checks that the state machine has exactly the
// transitions direction.go draws, and that move refuses any other.
func TestDirectionTransitions(t *testing.T) {
	states := []dirState{dirSetup, dirRunning, dirParked, dirHeld, dirEnded}
	legal := map[[2]dirState]bool{
		{dirSetup, dirRunning}:  true, // start
		{dirSetup, dirHeld}:     true, // start while frozen; adopted
		{dirSetup, dirEnded}:    true, // adopted, ended in the predecessor
		{dirRunning, dirParked}: true, // park
		{dirRunning, dirHeld}:   true, // hold
		{dirRunning, dirEnded}:  true, // end
		{dirParked, dirRunning}: true, // wake
		{dirHeld, dirRunning}:   true, // resume
		{dirHeld, dirEnded}:     true, // release
	}
	for _, from := range states {
		for _, to := range states {
			want := legal[[2]dirState{from, to}]
			if got := from.canMove(to); got != want {
				t.Errorf("%s → %s: canMove = %v, want %v", from, to, got, want)
			}
			c := &conn{id: 7}
			d := &direction{c: c, kind: kindUp, state: from}
			panicked := func() (p any) {
				defer func() { p = recover() }()
				d.move(to)
				return nil
			}()
			if want && panicked != nil {
				t.Errorf("%s → %s: move panicked: %v", from, to, panicked)
			}
			if !want {
				msg, _ := panicked.(string)
				if !strings.Contains(msg, "direction up: no transition "+from.String()+" → "+to.String()) {
					t.Errorf("%s → %s: move = %v, want a panic naming the transition", from, to, panicked)
				}
			}
		}
	}
}
