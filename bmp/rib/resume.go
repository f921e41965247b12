package rib

import (
	"fmt"
	"io"
)

// Saved describes a Router for a successor process (Save, Resume): plain
// data, with the replay itself written beside it.
type Saved struct {
	State      State  `json:"state"`
	Reason     string `json:"reason,omitempty"`
	Err        string `json:"error,omitempty"`
	Terminated bool   `json:"terminated,omitempty"`
	// Fed is how many bytes of the session the Router had been fed.
	Fed int64 `json:"fed"`
	// Replay is how many bytes of replay Save wrote: zero unless Keeping.
	Replay int64 `json:"replay_bytes"`
	// Pending is the incomplete message after the replay's point.
	Pending []byte `json:"pending,omitempty"`
}

// Save writes r's replay (as a Snapshot reads it) to w and describes the
// rest: where a Resume fed that replay and Pending stands where r stands.
// A Router not Keeping writes nothing. It fails if a snapshot is open.
func (r *Router) Save(w io.Writer) (Saved, error) {
	r.settle()
	sv := Saved{State: r.status.State, Reason: r.status.Reason, Terminated: r.status.Terminated, Fed: r.fed}
	if r.status.Err != nil {
		sv.Err = r.status.Err.Error()
	}
	if r.status.State != Keeping || r.released {
		if r.released && sv.State == Keeping {
			sv.State, sv.Reason, sv.Err = Failed, "released", r.name+": released"
		}
		return sv, nil
	}
	snap, err := r.Snapshot()
	if err != nil {
		return Saved{}, err
	}
	defer snap.Close()
	n, err := io.Copy(w, snap)
	if err != nil {
		return Saved{}, fmt.Errorf("%s: saving the state: %w", r.name, err)
	}
	sv.Replay = n
	if len(r.pend) > 0 && !r.status.Terminated {
		sv.Pending = append([]byte(nil), r.pend...)
	}
	return sv, nil
}

// savedErr is a predecessor's Status.Err: its text, wrapping the error
// of its State.
type savedErr struct {
	text string
	kind error
}

func (e *savedErr) Error() string { return e.text }
func (e *savedErr) Unwrap() error { return e.kind }

// Resume rebuilds the Router that Save described, drawing on mem, from
// the replay Save wrote: the same state and Pending, and byte offsets
// counted from the session's start. A Router that was not Keeping stays
// stopped, with its Status. The replay is the Router's own output, so a
// Resume that does not reproduce it (Status leaves Keeping) is reported,
// and the Router keeps that Status.
func Resume(mem *Memory, name string, sv Saved, replay io.Reader) (*Router, error) {
	r := NewRouter(mem, name)
	if sv.State != Keeping {
		kind := ErrMalformed
		switch sv.State {
		case Unkeyable:
			kind = ErrUnkeyable
		case OverMemory:
			kind = ErrOverMemory
		}
		r.status = Status{State: sv.State, Reason: sv.Reason, Err: &savedErr{sv.Err, kind}, Terminated: sv.Terminated}
		r.fed = sv.Fed
		return r, nil
	}
	buf := make([]byte, chunk)
	var read int64
	for {
		n, err := replay.Read(buf)
		r.Feed(buf[:n])
		read += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, fmt.Errorf("%s: reading the saved state: %w", name, err)
		}
	}
	if read != sv.Replay {
		return r, fmt.Errorf("%s: the saved state has %d bytes, want %d", name, read, sv.Replay)
	}
	if len(r.pend) > 0 {
		return r, fmt.Errorf("%s: the saved state ends inside a message", name)
	}
	r.Feed(sv.Pending)
	if r.status.State != Keeping {
		return r, fmt.Errorf("%s: resuming the saved state: %w", name, r.status.Err)
	}
	if sv.Terminated {
		r.status.Terminated = true
		r.dropPending()
	}
	r.fed = sv.Fed
	r.pendOff = sv.Fed - int64(len(r.pend))
	return r, nil
}
