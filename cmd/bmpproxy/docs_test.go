package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/bmpproxy/bmpproxy/conf"
	"github.com/urfave/cli/v2"
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

// docPages returns README.md and every Markdown file under docs/, as
// paths relative to root, with their text.
func docPages(t *testing.T, root string) map[string]string {
	t.Helper()
	pages := map[string]string{}
	read := func(rel string) {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		pages[rel] = string(b)
	}
	read("README.md")
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".md") {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		read(filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

// mdBlock is a fenced code block of a Markdown page.
type mdBlock struct {
	info string // the fence's info string, such as "yaml"
	line int    // the line of the opening fence, from 1
	text string
}

// splitMarkdown returns a page's prose, with fenced code blocks blanked
// out (so line numbers hold), and its fenced code blocks.
func splitMarkdown(page string) (prose []string, blocks []mdBlock) {
	var cur *mdBlock
	var fence string
	for i, line := range strings.Split(page, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		if cur == nil {
			if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
				fence = trimmed[:3]
				cur = &mdBlock{info: strings.TrimSpace(trimmed[3:]), line: i + 1}
				prose = append(prose, "")
				continue
			}
			prose = append(prose, line)
			continue
		}
		prose = append(prose, "")
		if strings.HasPrefix(trimmed, fence) && strings.TrimSpace(trimmed[3:]) == "" {
			blocks = append(blocks, *cur)
			cur = nil
			continue
		}
		cur.text += line + "\n"
	}
	return prose, blocks
}

// headingAnchors returns the anchors GitHub makes of a page's headings:
// lower case, letters, digits, '_' and '-' kept, spaces made '-', the
// rest dropped; a repeated one gets -1, -2, ….
func headingAnchors(page string) map[string]bool {
	prose, _ := splitMarkdown(page)
	link := regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range prose {
		text, ok := strings.CutPrefix(line, "#")
		if !ok {
			continue
		}
		text = strings.TrimLeft(text, "#")
		if !strings.HasPrefix(text, " ") {
			continue
		}
		text = link.ReplaceAllString(strings.TrimSpace(text), "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			seen[a]++
			a += "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		anchors[a] = true
	}
	return anchors
}

// TestDocsLinks checks every link of README.md and docs/*.md: a relative
// one names a file or directory of the repository, and an anchor its
// headings make; none leaves the repository (no absolute path, no
// "../" above the root, no scheme but http, https and mailto).
func TestDocsLinks(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	pages := docPages(t, root)
	inline := regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refDef := regexp.MustCompile(`^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)`)
	code := regexp.MustCompile("`[^`]*`")
	scheme := regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	anchorsOf := map[string]map[string]bool{}
	anchors := func(rel string) map[string]bool {
		if a, ok := anchorsOf[rel]; ok {
			return a
		}
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		anchorsOf[rel] = headingAnchors(string(b))
		return anchorsOf[rel]
	}
	links := 0
	for _, page := range sortedKeys(pages) {
		prose, _ := splitMarkdown(pages[page])
		for i, line := range prose {
			line = code.ReplaceAllString(line, "")
			var targets []string
			for _, m := range inline.FindAllStringSubmatch(line, -1) {
				targets = append(targets, m[1])
			}
			if m := refDef.FindStringSubmatch(line); m != nil {
				targets = append(targets, m[1])
			}
			for _, target := range targets {
				links++
				where := page + ":" + strconv.Itoa(i+1) + ": link " + strconv.Quote(target)
				if s := scheme.FindString(target); s != "" {
					if s != "http:" && s != "https:" && s != "mailto:" {
						t.Errorf("%s: scheme %s leaves the repository", where, s)
					}
					continue
				}
				path, anchor, _ := strings.Cut(target, "#")
				if strings.HasPrefix(path, "/") {
					t.Errorf("%s: an absolute path leaves the repository; link relative to %s", where, page)
					continue
				}
				rel := page
				if path != "" {
					rel = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(page), filepath.FromSlash(path))))
				}
				if rel == ".." || strings.HasPrefix(rel, "../") {
					t.Errorf("%s: points outside the repository (%s)", where, rel)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel))); err != nil {
					t.Errorf("%s: %s does not exist", where, rel)
					continue
				}
				if anchor == "" {
					continue
				}
				if !strings.HasSuffix(rel, ".md") {
					t.Errorf("%s: an anchor into %s, which is not Markdown", where, rel)
					continue
				}
				if !anchors(rel)[anchor] {
					t.Errorf("%s: no heading of %s makes the anchor #%s", where, rel, anchor)
				}
			}
		}
	}
	if links == 0 {
		t.Fatal("no links found; is the link pattern broken?")
	}
}

// TestDocsConfigs loads every configuration shown in README.md and
// docs/*.md: each document of a yaml block with a top-level listeners:
// key is a configuration file, and one with rules: is docker mode's.
func TestDocsConfigs(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	pages := docPages(t, root)
	configs := 0
	for _, page := range sortedKeys(pages) {
		_, blocks := splitMarkdown(pages[page])
		for _, b := range blocks {
			if b.info != "yaml" {
				continue
			}
			for n, doc := range strings.Split(b.text, "\n---\n") {
				where := page + ":" + strconv.Itoa(b.line) + ": yaml block, document " + strconv.Itoa(n+1)
				var err error
				switch {
				case hasTopKey(doc, "listeners"):
					_, err = conf.Parse([]byte(doc))
				case hasTopKey(doc, "rules"):
					_, err = conf.ParseDockerRules([]byte(doc))
				default:
					continue
				}
				configs++
				if err != nil {
					t.Errorf("%s does not load:\n%v\n%s", where, err, doc)
				}
			}
		}
	}
	if configs == 0 {
		t.Fatal("no configuration found in the documents")
	}
}

// hasTopKey reports whether a YAML document has key at its top level.
func hasTopKey(doc, key string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, key+":") {
			return true
		}
	}
	return false
}

// TestDocsFlags checks that the README names every flag of every command.
func TestDocsFlags(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	app := newApp(io.Discard, io.Discard)
	check := func(cmd string, flags []cli.Flag) {
		for _, f := range flags {
			name := f.Names()[0]
			named := regexp.MustCompile(`(^|[^\w-])--` + regexp.QuoteMeta(name) + `([^\w-]|$)`)
			if !named.Match(readme) {
				t.Errorf("README.md does not name %s's flag --%s", cmd, name)
			}
		}
	}
	check("bmpproxy", app.Flags)
	for _, c := range app.Commands {
		check("bmpproxy "+c.Name, c.Flags)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
