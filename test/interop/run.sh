#!/usr/bin/env bash
# Interop test: real BMP senders (FRR bgpd, gobgpd) in their own network
# namespaces → bmpproxy in the host namespace → real PROXY protocol parsers
# (pmacct's pmbmpd, HAProxy with accept-proxy, tshark's PROXY dissector);
# then, through a second bmpproxy with fan-out and resync, two pmbmpd and
# an inspect behind one listener, one pmbmpd killed and restarted while the
# routers carry thousands of routes (the resync phase); and, if asked
# for, FRR as a passive BMP station (bmp listener) that a bmpproxy dial
# listener connects to over IPv6 and IPv4 (the dial phase).
# Run as root: bash test/interop/run.sh. It installs what it needs from
# Debian, creates everything it uses and removes it on exit, even on failure.
# INTEROP_PHASES (default "proxy-protocol resync dial") picks the
# phases to run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PATH="/usr/local/go/bin:${PATH}"

if [[ $(id -u) != 0 ]]; then
	echo "interop: run as root (network namespaces)" >&2
	exit 1
fi

PHASES=" ${INTEROP_PHASES:-proxy-protocol resync dial} "
for p in $PHASES; do
	case "$p" in
	proxy-protocol | resync | dial) ;;
	*)
		echo "interop: INTEROP_PHASES: unknown phase \"$p\" (phases: proxy-protocol resync dial)" >&2
		exit 1
		;;
	esac
done

need=()
for p in frr gobgpd pmacct haproxy tshark iproute2; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
	echo "== apt-get install ${need[*]}"
	# The packages must not start their daemons (frr, pmacct) in this
	# namespace: the test starts its own, where it wants them.
	guard=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		guard=1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	if [[ -n "$guard" ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# Stray daemons from an earlier install would answer on the test's ports.
if pgrep -x bgpd >/dev/null || pgrep -x pmbmpd >/dev/null; then
	echo "interop: bgpd or pmbmpd is already running on this machine; stop it first" >&2
	exit 1
fi

# One run at a time; what a killed earlier run left (its namespaces and
# host links carry this script's prefixes, and nothing else does) goes first.
exec 9>/run/bmpx-interop.lock
flock -n 9 || { echo "interop: another run holds /run/bmpx-interop.lock" >&2; exit 1; }
for ns in $(ip netns list | awk '$1 ~ /^bmpx-r[12]-[0-9]+$/ {print $1}'); do
	echo "interop: removing namespace $ns left by an earlier run"
	ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
	ip netns del "$ns"
done
for l in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^bxh[12]-[0-9]+$' || true); do
	echo "interop: removing link $l left by an earlier run"
	ip link del "$l"
done

# Documentation prefixes only, and only if this machine does not route
# them itself (its uplink uses 192.0.2.0/24 and fd00::/64). The host's own
# namespace gets 198.51.100.0/24 only: the machine's registries (the Go
# module proxy, Debian) answer at an address in 203.0.113.0/24, and a route
# to that prefix here would cut them off for every later command.
for net in 2001:db8:1: 2001:db8:2: 2001:db8:12: 198.51.100.; do
	if ip route show | grep -q "^${net}" || ip -6 route show | grep -q "^${net}"; then
		echo "interop: this machine already routes ${net}; refusing to touch it" >&2
		exit 1
	fi
done

ID=$((RANDOM % 10000))
R1=bmpx-r1-$ID
R2=bmpx-r2-$ID
H1=bxh1-$ID
H2=bxh2-$ID
W=$(mktemp -d /tmp/bmpx-interop-XXXXXX)
chmod 755 "$W"
PIDS=()

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	sleep 0.5
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	for ns in "$R1" "$R2"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
		ip netns del "$ns" 2>/dev/null
	done
	ip link del "$H1" 2>/dev/null
	ip link del "$H2" 2>/dev/null
	if [[ -n "${KEEP:-}" ]]; then echo "interop: kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

stop_pid() { # stop_pid PID SIGNAL: signal a background job and reap it
	kill -"$2" "$1"
	wait "$1" 2>/dev/null || true
}
reap() { # reap PID: wait for a job that was told to stop, at most 10 s, then kill it
	for _ in $(seq 100); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

freeport() {
	local p
	for p in $(shuf -i 20000-29999 -n 100); do
		if ! ss -lntuH "sport = :$p" | grep -q .; then
			if [[ " ${USED:-} " != *" $p "* ]]; then
				USED="${USED:-} $p"
				echo "$p"
				return
			fi
		fi
	done
	echo "interop: no free port" >&2
	exit 1
}

echo "== build"
go build -o "$W/bmpproxy" ./cmd/bmpproxy
go build -o "$W/check" ./test/interop/check

echo "== network: $R1 (FRR) and $R2 (GoBGP), joined to the host by veth pairs"
ip netns add "$R1"
ip netns add "$R2"
ip link add "$H1" type veth peer name eth0 netns "$R1"
ip link add "$H2" type veth peer name eth0 netns "$R2"
ip addr add 2001:db8:1::1/64 dev "$H1" nodad
ip addr add 198.51.100.1/25 dev "$H1"
ip addr add 2001:db8:2::1/64 dev "$H2" nodad
ip addr add 198.51.100.129/25 dev "$H2"
ip link set "$H1" up
ip link set "$H2" up
ip -n "$R1" addr add 2001:db8:1::2/64 dev eth0 nodad
ip -n "$R1" addr add 198.51.100.2/25 dev eth0
ip -n "$R2" addr add 2001:db8:2::2/64 dev eth0 nodad
ip -n "$R2" addr add 198.51.100.130/25 dev eth0
# The BGP sessions between the routers (one for IPv6 unicast, one for
# IPv4 unicast) have a link of their own. Its IPv4 prefix exists in the
# two namespaces only, never in the host's.
ip -n "$R1" link add p12 type veth peer name p21 netns "$R2"
ip -n "$R1" addr add 2001:db8:12::1/64 dev p12 nodad
ip -n "$R2" addr add 2001:db8:12::2/64 dev p21 nodad
ip -n "$R1" addr add 203.0.113.1/30 dev p12
ip -n "$R2" addr add 203.0.113.2/30 dev p21
for ns in "$R1" "$R2"; do
	ip -n "$ns" link set lo up
	ip -n "$ns" link set eth0 up
done
ip -n "$R1" link set p12 up
ip -n "$R2" link set p21 up

L_PM=$(freeport) L_HA=$(freeport) L_TS=$(freeport) ADMIN=$(freeport)
PM=$(freeport) HA=$(freeport) INS_HA=$(freeport) INS_TS=$(freeport)
# The resync phase: its own bmpproxy, listener and admin, in front of two
# pmbmpd (A is killed and restarted, B never is) and an inspect.
L_RS=$(freeport) ADMIN_RS=$(freeport) PM_A=$(freeport) PM_B=$(freeport) INS_RS=$(freeport)
# The dial phase: FRR's BMP listeners (in $R1), and its own bmpproxy's
# admin and inspect.
DL6=$(freeport) DL4=$(freeport) ADMIN_DL=$(freeport) INS_DL=$(freeport)

declare -A PID=() # the collectors and proxies the phases stop, by name

# pmbmpd_config NAME PORT DEBUG: $W/NAME.conf, logging to $W/NAME.log and
# recording every BMP message to $W/NAME.json.
pmbmpd_config() {
	cat >"$W/$1.conf" <<CONF
daemonize: false
logfile: $W/$1.log
bmp_daemon_ip: 127.0.0.1
bmp_daemon_port: $2
bmp_daemon_max_peers: 16
bmp_daemon_parse_proxy_header: true
bmp_daemon_msglog_file: $W/$1.json
bmp_daemon_msglog_output: json
debug: $3
CONF
}
start_pmbmpd() { # start_pmbmpd NAME
	pmbmpd -f "$W/$1.conf" >>"$W/$1.out" 2>&1 &
	PID[$1]=$!
	PIDS+=($!)
}
wait_listen() { # wait_listen PORT...: until something listens on each, at most 10 s
	local p
	for p in "$@"; do
		for _ in $(seq 100); do
			if ss -lntH "sport = :$p" | grep -q .; then continue 2; fi
			sleep 0.1
		done
		echo "interop: nothing listens on :$p" >&2
		exit 1
	done
}
start_inspect() { # start_inspect PORT FILE
	"$W/bmpproxy" inspect --listen "127.0.0.1:$1" --json >"$W/$2" 2>/dev/null &
	PIDS+=($!)
}
start_proxy() { # start_proxy NAME: $W/NAME.yaml, logging to $W/NAME.log
	"$W/bmpproxy" --config "$W/$1.yaml" >>"$W/$1.log" 2>&1 &
	PID[$1]=$!
	PIDS+=($!)
}

echo "== collectors: pmbmpd :$PM, HAProxy :$HA → inspect :$INS_HA, inspect :$INS_TS (tshark watches it)"
pmbmpd_config pmbmpd "$PM" true
start_pmbmpd pmbmpd

cat >"$W/haproxy.cfg" <<CONF
global
	log stdout format raw local0
defaults
	mode tcp
	log global
	timeout connect 5s
	timeout client 1h
	timeout server 1h
frontend bmp
	bind 127.0.0.1:$HA accept-proxy
	option logasap
	log-format "client %ci %cp"
	default_backend inspect
backend inspect
	server inspect 127.0.0.1:$INS_HA
CONF
haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 &
PIDS+=($!)
start_inspect "$INS_HA" inspect-haproxy.json
start_inspect "$INS_TS" inspect-tshark.json
start_tshark() { # returns once it captures, so that no session's start is missed
	tshark -q -i lo -f "tcp port $INS_TS" -w "$W/proxy.pcapng" >"$W/tshark.out" 2>&1 &
	TSHARK=$!
	PIDS+=("$TSHARK")
	for _ in $(seq 100); do
		grep -q "Capturing on" "$W/tshark.out" && return
		sleep 0.1
	done
	echo "interop: tshark did not start:" >&2
	cat "$W/tshark.out" >&2
	exit 1
}
start_tshark

proxy_config() { # $1: v2 or none
	cat >"$W/bmpproxy.yaml" <<CONF
admin: "127.0.0.1:$ADMIN"
listeners:
  - name: bmp-pmacct
    listen: "[::]:$L_PM"
    target: "127.0.0.1:$PM"
    proxy_protocol: $1
    bmp: true
  - name: bmp-haproxy
    listen: "[::]:$L_HA"
    target: "127.0.0.1:$HA"
    proxy_protocol: $1
    bmp: true
  - name: bmp-tshark
    listen: "[::]:$L_TS"
    target: "127.0.0.1:$INS_TS"
    proxy_protocol: $1
    bmp: true
CONF
}
proxy_config v2
start_proxy bmpproxy

echo "== resync collectors: bmpproxy :$L_RS (fan-out, resync) → pmbmpd A :$PM_A (primary), pmbmpd B :$PM_B, inspect :$INS_RS"
pmbmpd_config pmbmpd-a "$PM_A" false
pmbmpd_config pmbmpd-b "$PM_B" false
start_pmbmpd pmbmpd-a
start_pmbmpd pmbmpd-b
start_inspect "$INS_RS" inspect-resync.json
# Every leg must connect at the session's start: a collector still
# starting would be dialed again and replayed, and B and inspect stand
# for collectors that never missed a byte.
wait_listen "$PM_A" "$PM_B" "$INS_RS"
cat >"$W/resync.yaml" <<CONF
admin: "127.0.0.1:$ADMIN_RS"
drain_timeout: 0s
listeners:
  - name: bmp-resync
    listen: "[::]:$L_RS"
    bmp: true
    resync: true
    targets:
      - target: "127.0.0.1:$PM_A"
        proxy_protocol: v2
      - target: "127.0.0.1:$PM_B"
        proxy_protocol: v2
      - target: "127.0.0.1:$INS_RS"
        proxy_protocol: v2
CONF
start_proxy resync

echo "== routers: FRR bgpd -M bmp in $R1, gobgpd in $R2; routes: $("$W/check" -stage plan)"
# The dial phase's targets: FRR waits to be dialed. "show bmp" lists
# targets by name, so "dialed" comes before the "resync" section that
# the resync phase reads.
FRR_DIAL="!"
if [[ "$PHASES" == *" dial "* ]]; then
	FRR_DIAL=" bmp targets dialed
  bmp monitor ipv4 unicast pre-policy
  bmp monitor ipv6 unicast pre-policy
  bmp listener 2001:db8:1::2 port $DL6
  bmp listener 198.51.100.2 port $DL4
 exit"
fi
# FRR's BMP to the resync listener goes over IPv4, so that pmbmpd (which
# parses only the AF_INET form of PROXY v2) records its real address.
cat >"$W/frr.conf" <<CONF
hostname edge-r1
log stdout informational
!
route-map rm-c1 permit 10
 set community 65001:1
exit
route-map rm-med permit 10
 set metric 77
exit
!
router bgp 65001
 bgp router-id 198.51.100.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 2001:db8:12::2 remote-as 65002
 neighbor 203.0.113.2 remote-as 65002
 address-family ipv4 unicast
  neighbor 203.0.113.2 soft-reconfiguration inbound
  network 198.51.100.0/25
$("$W/check" -stage plan -print frr-ipv4)
 exit-address-family
 address-family ipv6 unicast
  neighbor 2001:db8:12::2 activate
  neighbor 2001:db8:12::2 soft-reconfiguration inbound
  network 2001:db8:100::/48
  network 2001:db8:101::/48
$("$W/check" -stage plan -print frr-ipv6)
 exit-address-family
 bmp targets collectors
  bmp monitor ipv4 unicast pre-policy
  bmp monitor ipv6 unicast pre-policy
  bmp connect 2001:db8:1::1 port $L_PM min-retry 1000 max-retry 2000
  bmp connect 2001:db8:1::1 port $L_HA min-retry 1000 max-retry 2000
  bmp connect 2001:db8:1::1 port $L_TS min-retry 1000 max-retry 2000
 exit
 bmp targets resync
  bmp monitor ipv4 unicast pre-policy
  bmp monitor ipv6 unicast pre-policy
  bmp connect 198.51.100.1 port $L_RS min-retry 1000 max-retry 2000
 exit
$FRR_DIAL
!
CONF
mkdir -p "$W/frr"
chown -R frr:frr "$W/frr"
chmod 644 "$W/frr.conf"
ip netns exec "$R1" /usr/lib/frr/bgpd -M bmp -Z -n -u frr -g frr -P 0 \
	-f "$W/frr.conf" -i "$W/frr/bgpd.pid" --vty_socket "$W/frr" >"$W/bgpd.log" 2>&1 &
PIDS+=($!)

cat >"$W/gobgpd.toml" <<CONF
[global.config]
  as = 65002
  router-id = "198.51.100.130"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "2001:db8:12::1"
    peer-as = 65001
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "203.0.113.1"
    peer-as = 65001
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
CONF
# One collector per port. GoBGP never reads its BMP socket: it notices a
# lost session only when a write fails. Statistics reports make it write
# every 15 s (its minimum).
for port in "$L_PM" "$L_HA" "$L_TS" "$L_RS"; do
	cat >>"$W/gobgpd.toml" <<CONF
[[bmp-servers]]
  [bmp-servers.config]
    address = "198.51.100.129"
    port = $port
    route-monitoring-policy = "pre-policy"
    statistics-timeout = 15
CONF
done
ip netns exec "$R2" gobgpd -f "$W/gobgpd.toml" -p --api-hosts=127.0.0.1:50051 --pprof-disable >"$W/gobgpd.log" 2>&1 &
PIDS+=($!)

# GoBGP's routes: the bulk from an MRT table dump, the few that the
# resync phase withdraws or changes one by one.
for _ in $(seq 100); do
	ip netns exec "$R2" gobgp global >/dev/null 2>&1 && break
	sleep 0.1
done
"$W/check" -stage gobgp-load -dir "$W" -r2 "$R2"

CHECK=("$W/check" -dir "$W" -admin "127.0.0.1:$ADMIN" -tshark-port "$INS_TS")

phase_proxy_protocol() {
	echo "== with PROXY v2: every collector must see the routers' real addresses"
	"${CHECK[@]}" -mode v2 -stage wait
	stop_pid "$TSHARK" INT
	"${CHECK[@]}" -mode v2 -stage first

	echo "== kill the pmacct collector while both routers are connected, then restart it"
	stop_pid "${PID[pmbmpd]}" INT
	sleep 3
	mv "$W/pmbmpd.json" "$W/pmbmpd-before.json"
	start_pmbmpd pmbmpd
	"${CHECK[@]}" -mode v2 -stage restart

	echo "== with proxy_protocol: none, the failure this project fixes must show"
	mv "$W/proxy.pcapng" "$W/proxy-v2.pcapng"
	start_tshark
	stop_pid "${PID[pmbmpd]}" INT
	mv "$W/pmbmpd.json" "$W/pmbmpd-restart.json"
	start_pmbmpd pmbmpd
	stop_pid "${PID[bmpproxy]}" TERM
	proxy_config none
	start_proxy bmpproxy
	"${CHECK[@]}" -mode none -stage wait
	stop_pid "$TSHARK" INT
	"${CHECK[@]}" -mode none -stage none
}

RESYNC=("$W/check" -dir "$W" -admin "127.0.0.1:$ADMIN_RS" -r1 "$R1" -r2 "$R2" -rs-port "$L_RS"
	-pm-a "127.0.0.1:$PM_A" -pm-b "127.0.0.1:$PM_B" -inspect "127.0.0.1:$INS_RS")

phase_resync() {
	echo "== resync: kill pmbmpd A (the primary of three legs) mid-session, change routes while it is down, restart it"
	"${RESYNC[@]}" -stage resync-loaded
	stop_pid "${PID[pmbmpd-a]}" KILL
	mv "$W/pmbmpd-a.json" "$W/pmbmpd-a-before.json"
	"${RESYNC[@]}" -stage resync-down
	start_pmbmpd pmbmpd-a
	"${RESYNC[@]}" -stage resync-back -proxy-pid "${PID[resync]}"
	reap "${PID[resync]}"
}

phase_dial() {
	echo "== dial: FRR waits to be dialed on [2001:db8:1::2]:$DL6 and 198.51.100.2:$DL4; bmpproxy (admin :$ADMIN_DL) dials both → inspect :$INS_DL"
	start_inspect "$INS_DL" inspect-dial.json
	wait_listen "$INS_DL"
	cat >"$W/dial.yaml" <<CONF
admin: "127.0.0.1:$ADMIN_DL"
drain_timeout: 0s
listeners:
  - name: bmp-dial
    dial: ["[2001:db8:1::2]:$DL6", "198.51.100.2:$DL4"]
    bmp: true
    target: "127.0.0.1:$INS_DL"
CONF
	start_proxy dial
	"$W/check" -dir "$W" -admin "127.0.0.1:$ADMIN_DL" -stage dial \
		-dial6 "[2001:db8:1::2]:$DL6" -dial4 "198.51.100.2:$DL4" -proxy-pid "${PID[dial]}"
	reap "${PID[dial]}"
}

if [[ "$PHASES" == *" proxy-protocol "* ]]; then phase_proxy_protocol; fi
if [[ "$PHASES" == *" resync "* ]]; then phase_resync; fi
if [[ "$PHASES" == *" dial "* ]]; then phase_dial; fi
echo "interop: pass"
