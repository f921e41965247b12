// Package dnsname tells a plausible DNS name from other text, for the
// packages that take "host:port" targets (conf, pool) and must refuse
// what no resolver could look up.
package dnsname

import "strings"

// Valid reports whether h is a plausible DNS name: at most 253 bytes of
// labels of 1 to 63 letters, digits, '-' and '_', separated by dots, with
// an optional final dot.
func Valid(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}
