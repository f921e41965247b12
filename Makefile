.PHONY: build test bench bench-smoke docs release

# Stamped into the binary (bmpproxy --version): a tag or describe of the
# checkout, and the commit. Override on the command line: make release VERSION=v1.0.0
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PLATFORMS := linux/amd64 linux/arm64

build:
	go build -o bmpproxy ./cmd/bmpproxy

test:
	go test -race -count=1 ./...

# The full benchmark (as root): installs the peers, then writes bench/RESULTS.md.
bench:
	bash bench/install.sh
	go run ./bench

bench-smoke:
	bash bench/install.sh
	go run ./bench -smoke -out /tmp/bmpproxy-bench-smoke.md

# Regenerate the man page and the shell completions from the CLI
# definitions; CI fails when the committed ones differ.
docs:
	cd cmd/bmpproxy && go test -count=1 -run '^TestGeneratedDocs$$' . -args -update-docs

# Static binaries for each platform, and their checksums, in dist/.
release:
	rm -rf dist && mkdir -p dist
	set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "== $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -buildvcs=false \
			-ldflags "$(LDFLAGS)" -o dist/bmpproxy-$(VERSION)-$$os-$$arch ./cmd/bmpproxy; \
	done
	cp docs/man/bmpproxy.1 dist/
	cd dist && sha256sum bmpproxy-* bmpproxy.1 > SHA256SUMS
	cat dist/SHA256SUMS
