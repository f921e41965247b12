// Package netsetup owns the return routing that transparent dialing
// needs: the collector's replies go to the router's address and must be
// routed back into the proxy host's local stack, capturing only the
// proxied connections. It prints the nft and ip commands, applies them
// idempotently and removes them.
package netsetup

import (
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// Plan is the return routing transparent dialing needs: the
// collector's replies go to the router's address, and must be routed into
// this host's local stack. Only the proxied connections are captured.
type Plan struct {
	nft   string     // an nft script, or empty
	rules [][]string // ip arguments: "-4|-6 rule add …" and "-4|-6 route replace … table T"
}

// New returns the plan for a case:
//
//   - "loopback": the collector listens on this host's loopback. Replies
//     leave lo from 127.0.0.0/8 or ::1 towards the router; a local route
//     in table T sends them back in.
//   - "namespace" (and "docker", the same recipe): the collector is in
//     another network namespace or a Docker bridge network, routed
//     through this host. bmpproxy marks its target sockets with mark M;
//     nftables saves M in conntrack on output and marks the replies M+1
//     on prerouting, and fwmark M+1 looks up table T, whose local route
//     delivers them to the transparent socket. Marking the replies with a
//     different mark keeps the proxy's own outgoing SYNs out of table T.
func New(kind string, mark, table int) (Plan, error) {
	t := strconv.Itoa(table)
	var p Plan
	if err := CheckCase(kind); err != nil {
		return p, err
	}
	switch kind {
	case "loopback":
		p.rules = [][]string{
			{"-4", "rule", "add", "from", "127.0.0.0/8", "iif", "lo", "lookup", t},
			{"-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", t},
			{"-6", "rule", "add", "from", "::1", "iif", "lo", "lookup", t},
			{"-6", "route", "replace", "local", "::/0", "dev", "lo", "table", t},
		}
	default: // "namespace", "docker"
		reply := strconv.Itoa(mark + 1)
		p.nft = fmt.Sprintf(`table inet bmpproxy {
	chain out {
		type route hook output priority mangle; policy accept;
		meta mark %d ct mark set %d
	}
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		ct mark %d meta mark set %s
	}
}
`, mark, mark, mark, reply)
		p.rules = [][]string{
			{"-4", "rule", "add", "fwmark", reply, "lookup", t},
			{"-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", t},
			{"-6", "rule", "add", "fwmark", reply, "lookup", t},
			{"-6", "route", "replace", "local", "::/0", "dev", "lo", "table", t},
		}
	}
	return p, nil
}

// CheckCase returns an error naming the valid cases unless kind is one.
func CheckCase(kind string) error {
	switch kind {
	case "loopback", "namespace", "docker":
		return nil
	}
	return fmt.Errorf("unknown case %q (want loopback, namespace or docker)", kind)
}

// Print writes the commands as a shell script.
func (p Plan) Print(w io.Writer) {
	if p.nft != "" {
		fmt.Fprintf(w, "nft -f - <<'EOF'\n%sEOF\n", p.nft)
	}
	for _, r := range p.rules {
		fmt.Fprintln(w, "ip "+strings.Join(r, " "))
	}
}

func run1(w io.Writer, name string, args []string, stdin string) error {
	fmt.Fprintf(w, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Apply adds what is missing: the nft table is replaced whole, a rule is
// added only if "ip rule show" lacks it, and routes are replaced.
func (p Plan) Apply(w io.Writer) error {
	if p.nft != "" {
		script := "table inet bmpproxy\ndelete table inet bmpproxy\n" + p.nft
		if err := run1(w, "nft", []string{"-f", "-"}, script); err != nil {
			return err
		}
	}
	for _, r := range p.rules {
		if r[1] == "rule" && ruleExists(r) {
			fmt.Fprintf(w, "= ip %s (present)\n", strings.Join(r, " "))
			continue
		}
		if err := run1(w, "ip", r, ""); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes every rule copy, flushes the tables and deletes the nft
// table; what is already gone is no error.
func (p Plan) Remove(w io.Writer) error {
	for _, r := range p.rules {
		if r[1] == "rule" {
			del := append([]string{r[0], "rule", "del"}, r[3:]...)
			for ruleExists(r) {
				if err := run1(w, "ip", del, ""); err != nil {
					return err
				}
			}
			continue
		}
		// "route replace … table T" is undone by flushing T; an empty
		// table is fine.
		run1(w, "ip", []string{r[0], "route", "flush", "table", r[len(r)-1]}, "")
	}
	if p.nft != "" {
		if err := exec.Command("nft", "list", "table", "inet", "bmpproxy").Run(); err == nil {
			return run1(w, "nft", []string{"delete", "table", "inet", "bmpproxy"}, "")
		}
	}
	return nil
}

// ruleExists reports whether "ip rule show" lists the selector and table
// of the rule in r (ip -4|-6 rule add SELECTOR... lookup T).
func ruleExists(r []string) bool {
	out, err := exec.Command("ip", r[0], "rule", "show").Output()
	if err != nil {
		return false
	}
	var sel []string
	for i := 3; i < len(r); i += 2 {
		k, v := r[i], r[i+1]
		if k == "fwmark" {
			n, _ := strconv.Atoi(v)
			v = fmt.Sprintf("0x%x", n)
		}
		sel = append(sel, k+" "+v)
	}
	for _, line := range strings.Split(string(out), "\n") {
		ok := true
		for _, s := range sel {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok && len(sel) > 0 {
			return true
		}
	}
	return false
}
