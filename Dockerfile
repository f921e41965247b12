# bmpproxy container image: a static binary on distroless, as a non-root user.
#
#   docker build -t bmpproxy --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run --rm bmpproxy --version
#
# Capabilities: the image runs as UID 65532 and needs none for ports 1024 and
# above (BMP's 5000). Run it with --cap-drop ALL --cap-add NET_BIND_SERVICE.
# Ports below 1024: on a Docker bridge network any user may bind them (Docker
# sets net.ipv4.ip_unprivileged_port_start=0 there); on the host network, run
# with --user 0 and still only NET_BIND_SERVICE. Transparent dialing
# (proxy_protocol: transparent) also needs --user 0 --cap-add NET_ADMIN:
# Docker and Kubernetes give a non-root user no capabilities.
#
# CI builds a FROM scratch variant around a binary built with the same flags
# (test/dockerengine), since no base image can be pulled there.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/bmpproxy ./cmd/bmpproxy

# For transparent dialing (proxy_protocol: transparent) with transparent_setup,
# bmpproxy runs ip (and nft for the namespace case) in its own network
# namespace: this target has them. It runs as root, with NET_ADMIN only:
#   docker build --target transparent -t bmpproxy:transparent .
FROM debian:bookworm-slim AS transparent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bmpproxy /usr/local/bin/bmpproxy
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/bmpproxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bmpproxy"]
CMD ["--config", "/etc/bmpproxy/bmpproxy.yaml"]

# The default image (the last stage). It ships no config: a default could
# only guess the collector, and a PROXY header sent to one that reads none
# (OpenBMP, gobmp, Rotonda) drops every router. Mount yours:
#   docker run -v $PWD/bmpproxy.yaml:/etc/bmpproxy/bmpproxy.yaml:ro bmpproxy
# or replace the command with flags (docker run bmpproxy --target HOST:PORT
# --proxy-protocol ...). Without either, the default command exits with
# status 2 and says so. examples/ has a config for each kind of collector.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bmpproxy /usr/local/bin/bmpproxy
USER 65532:65532
EXPOSE 5000
# GET http://127.0.0.1:9180/healthz, the admin listener of the examples
# (admin: 127.0.0.1:9180); set BMPPROXY_HEALTHCHECK_URL for another one.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/bmpproxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bmpproxy"]
CMD ["--config", "/etc/bmpproxy/bmpproxy.yaml"]
