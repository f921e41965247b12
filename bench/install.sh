#!/usr/bin/env bash
# Installs the peers bench/ measures bmpproxy against, from Debian:
# docker.io (for /usr/sbin/docker-proxy), haproxy, socat, nginx with the
# stream module, and util-linux for taskset. Services are not started.
set -euo pipefail
if [[ $EUID -ne 0 ]]; then
	echo "install.sh: run as root" >&2
	exit 1
fi
pkgs=(docker.io haproxy socat nginx-light libnginx-mod-stream util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
# Keep package scripts from starting dockerd, nginx or haproxy.
cleanup=
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	cleanup=1
fi
trap '[[ -n "$cleanup" ]] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
