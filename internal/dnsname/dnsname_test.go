package dnsname

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		h    string
		want bool
	}{
		{"collector", true},
		{"collectors.bmp.svc.cluster.local", true},
		{"collectors.bmp.svc.", true},
		{"pm_acct-1.example", true},
		{"", false},
		{".", false},
		{"a..b", false},
		{"bad host", false},
		{"exa$mple", false},
		{strings.Repeat("a", 63) + ".x", true},
		{strings.Repeat("a", 64) + ".x", false},
		{strings.Repeat("a.", 126) + "a", true},  // 253 bytes
		{strings.Repeat("a.", 127) + "a", false}, // 255 bytes
	} {
		if got := Valid(tc.h); got != tc.want {
			t.Errorf("Valid(%q) = %t, want %t", tc.h, got, tc.want)
		}
	}
}
