.PHONY: build test bench bench-smoke

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
