package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The man page and the shell completions are generated from the CLI
// definitions in newApp, and committed. TestGeneratedDocs fails when the
// committed files differ from what the definitions give now, so they
// cannot drift. `make docs` rewrites them; CI also writes them into a
// temporary directory (-docs-out) and diffs the trees.
var (
	updateDocs = flag.Bool("update-docs", false, "rewrite the committed man page and completions from the CLI definitions")
	docsOut    = flag.String("docs-out", "", "also write the generated man page and completions under this directory")
)

// generatedHeader opens the hand-written completion scripts.
const generatedHeader = "# Generated from the CLI definitions by `make docs`; do not edit.\n"

// bashCompletion asks the binary itself for candidates, through
// urfave/cli's --generate-bash-completion: subcommands, and the flags of
// the current command when the word starts with a dash.
const bashCompletion = `# bash completion for bmpproxy.
` + generatedHeader + `# Install: cp bmpproxy /usr/share/bash-completion/completions/
_bmpproxy() {
	local cur="${COMP_WORDS[COMP_CWORD]}"
	local -a args=("${COMP_WORDS[@]:0:COMP_CWORD}")
	if [[ "$cur" == -* ]]; then
		args+=("$cur")
	fi
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${args[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _bmpproxy bmpproxy
`

// zshCompletion is the same for zsh; urfave/cli adds descriptions when
// _CLI_ZSH_AUTOCOMPLETE_HACK=1.
const zshCompletion = `#compdef bmpproxy
# zsh completion for bmpproxy.
` + generatedHeader + `# Install: cp _bmpproxy into a directory of $fpath, then compinit.
_bmpproxy() {
	local -a opts args
	local cur=${words[CURRENT]}
	args=(${words[1,CURRENT-1]})
	if [[ "$cur" == -* ]]; then
		args+=("$cur")
	fi
	opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${args[@]} --generate-bash-completion 2>/dev/null)}")
	if [[ -n "${opts[1]}" ]]; then
		_describe 'values' opts
	else
		_files
	fi
}
if [[ "$funcstack[1]" == "_bmpproxy" ]]; then
	_bmpproxy "$@"
else
	compdef _bmpproxy bmpproxy
fi
`

// generatedDocs returns the generated files by their path in the
// repository.
func generatedDocs(t *testing.T) map[string]string {
	t.Helper()
	app := newApp(io.Discard, io.Discard)
	man, err := app.ToManWithSection(1)
	if err != nil {
		t.Fatal(err)
	}
	fish, err := app.ToFishCompletion()
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"docs/man/bmpproxy.1":                   man,
		"contrib/completion/bash/bmpproxy":      bashCompletion,
		"contrib/completion/zsh/_bmpproxy":      zshCompletion,
		"contrib/completion/fish/bmpproxy.fish": "# fish completion for bmpproxy.\n" + generatedHeader + fish,
		"contrib/completion/README.md":          completionReadme,
		"docs/man/README.md":                    manReadme,
	}
}

const completionReadme = `# Shell completion for bmpproxy

` + "Generated from the CLI definitions by `make docs`; CI fails if these files differ\n" +
	"from what the code gives. Do not edit them by hand.\n\n" +
	"| shell | file | install |\n|---|---|---|\n" +
	"| bash | `bash/bmpproxy` | `cp bash/bmpproxy /usr/share/bash-completion/completions/` |\n" +
	"| zsh | `zsh/_bmpproxy` | `cp zsh/_bmpproxy /usr/local/share/zsh/site-functions/` |\n" +
	"| fish | `fish/bmpproxy.fish` | `cp fish/bmpproxy.fish ~/.config/fish/completions/` |\n\n" +
	"bash and zsh ask the binary for candidates (`bmpproxy --generate-bash-completion`), so they\n" +
	"follow the installed version; the fish file lists the flags of this version.\n"

const manReadme = "# Man page\n\n" +
	"`bmpproxy.1` is generated from the CLI definitions by `make docs`; CI fails if it\n" +
	"differs from what the code gives. Read it with `man ./docs/man/bmpproxy.1`; install it\n" +
	"with `install -m 644 docs/man/bmpproxy.1 /usr/local/share/man/man1/`.\n"

func TestGeneratedDocs(t *testing.T) {
	files := generatedDocs(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	write := func(dir string) {
		for _, p := range paths {
			full := filepath.Join(dir, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte(files[p]), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if *docsOut != "" {
		write(*docsOut)
	}
	if *updateDocs {
		write(root)
		return
	}
	for _, p := range paths {
		got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil {
			t.Errorf("%s: %v (run `make docs`)", p, err)
			continue
		}
		if !bytes.Equal(got, []byte(files[p])) {
			t.Errorf("%s differs from what the CLI definitions give; run `make docs` and commit it", p)
		}
	}
}

// TestBashCompletion runs the committed bash completion against the real
// binary, as bash would on TAB.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("../../contrib/completion/bash/bmpproxy")
	if err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) []string {
		t.Helper()
		// COMP_WORDS as bash fills it; the last word is the one being completed.
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		prog := "source " + script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
			strconv.Itoa(len(words)-1) + "\n_bmpproxy\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(binPath())+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	has := func(got []string, want string) bool {
		for _, g := range got {
			if g == want {
				return true
			}
		}
		return false
	}
	if got := complete("bmpproxy", ""); !has(got, "inspect") || !has(got, "check") || !has(got, "transparent-setup") {
		t.Errorf("bmpproxy <TAB>: %q, want the subcommands", got)
	}
	if got := complete("bmpproxy", "--admin-l"); len(got) != 1 || got[0] != "--admin-listen" {
		t.Errorf("bmpproxy --admin-l<TAB>: %q, want --admin-listen", got)
	}
	if got := complete("bmpproxy", "--adm"); len(got) != 2 || !has(got, "--admin-listen") || !has(got, "--admin-token-file") {
		t.Errorf("bmpproxy --adm<TAB>: %q, want --admin-listen and --admin-token-file", got)
	}
	if got := complete("bmpproxy", "inspect", "--js"); len(got) != 1 || got[0] != "--json" {
		t.Errorf("bmpproxy inspect --js<TAB>: %q, want --json", got)
	}
}
