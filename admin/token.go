package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxTokenFile bounds the size of a token file.
const MaxTokenFile = 4096

// Token is a bearer token, kept only as its SHA-256 digest: it has nothing
// to log, and comparing digests takes the same time whatever the length
// of the token presented.
type Token struct{ sum [sha256.Size]byte }

// NewToken returns the token s.
func NewToken(s string) *Token { return &Token{sum: sha256.Sum256([]byte(s))} }

// Matches reports, in constant time, whether s is the token.
func (t *Token) Matches(s string) bool {
	sum := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(t.sum[:], sum[:]) == 1
}

// Equal reports whether t and u are the same token, or both none.
func (t *Token) Equal(u *Token) bool {
	if t == nil || u == nil {
		return t == u
	}
	return t.sum == u.sum
}

// ReadTokenFile returns the token in the file at path, without the white
// space around it. It refuses a file that is missing, empty, not a
// regular file, longer than MaxTokenFile, or readable by users other than
// its owner (mode&0o077 != 0), and a token with a byte that is not
// printable ASCII, as an HTTP header could not carry it. One exception to
// the mode rule: a file owned by root may be readable, not writable, by its
// group (0440, 0640), as a Kubernetes Secret volume is when the Pod sets
// fsGroup. Each error names the file and what to do.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w; write the token to it, then chmod 600 %s", err, path)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	owner := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = int(st.Uid)
	}
	if err := checkTokenMode(fi.Mode(), owner); err != nil {
		return "", fmt.Errorf("%s: %w; chmod 600 %s", path, err, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > MaxTokenFile {
		return "", fmt.Errorf("%s: longer than %d bytes; it must hold only the token", path, MaxTokenFile)
	}
	tok := bytes.TrimSpace(b)
	if len(tok) == 0 {
		return "", fmt.Errorf("%s: empty; write the token to it, for example: openssl rand -hex 32 > %s", path, path)
	}
	for i, c := range tok {
		if c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("%s: byte %d of the token is %q, not printable ASCII; an HTTP header cannot carry it", path, i, c)
		}
	}
	return string(tok), nil
}

// checkTokenMode refuses mode unless only the owner may read the file, or
// the owner is root (uid 0) and its group may read it too.
func checkTokenMode(mode fs.FileMode, owner int) error {
	perm := mode.Perm()
	if perm&0o077 == 0 || owner == 0 && perm&0o077 == 0o040 {
		return nil
	}
	return fmt.Errorf("mode %04o lets group or others read the token", perm)
}
