package main

// version and commit are stamped at link time by `make release` and the
// Dockerfile:
//
//	go build -trimpath -ldflags "-X main.version=v1.2.3 -X main.commit=0123abc" ./cmd/bmpproxy
//
// When they are empty, --version falls back to the module version and the
// VCS revision that the Go toolchain records in the build info.
var (
	version string
	commit  string
)
