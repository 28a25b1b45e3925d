#!/usr/bin/env bash
# Proves kadrtc-netdelay delays forwarded packets: two hosts talk through a router namespace whose
# iptables FORWARD rule hands every packet to NFQUEUE 0, where the tool holds it 30 ms.
#
#   h1 (10.99.1.2) --veth-- (10.99.1.1) router (10.99.2.1) --veth-- (10.99.2.2) h2
#
# Measures ping RTT h1 -> h2 without the tool (queue bypassed) and with it (30 ms each way, so
# about 60 ms), then checks that a TCP (HTTP) and a UDP flow get through the delay. Exits non-zero
# unless the delayed RTT is between 50 and 90 ms. Needs root, ip, iptables (nft backend), ping,
# curl and python3. Binary: $NETDELAY_BIN, default target/debug/kadrtc-netdelay of this workspace.
# Creates namespaces kdtest-<pid>-{h1,r,h2} and deletes them on any exit.
set -euo pipefail

readonly DELAY_MS=30
readonly MIN_RTT_MS=50
readonly MAX_RTT_MS=90
readonly MAX_BASE_RTT_MS=10
readonly READY_TIMEOUT_S=10

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${NETDELAY_BIN:-$root/target/debug/kadrtc-netdelay}
h1=kdtest-$$-h1
r=kdtest-$$-r
h2=kdtest-$$-h2
work=$(mktemp -d)
tool_pid=
server_pids=()

log() { printf 'selftest: %s\n' "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

# Stops a process we started: SIGTERM, up to 5 s grace, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    # The tool first, so that nothing is left queued, then the servers, then the namespaces
    # (a namespace with a process still inside would outlive `ip netns del`).
    [[ -n $tool_pid ]] && stop_pid "$tool_pid"
    for pid in "${server_pids[@]}"; do stop_pid "$pid"; done
    for ns in "$h1" "$r" "$h2"; do
        ip netns del "$ns" 2>/dev/null
    done
    exec 3>&-
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Average RTT in ms from `ping -q` output on stdin ("rtt min/avg/max/mdev = a/b/c/d ms").
ping_avg() { awk -F/ '/^(rtt|round-trip)/ { print $5 }'; }

# Succeeds if $1 <= $2 <= $3 (decimal numbers).
between() { awk -v lo="$1" -v x="$2" -v hi="$3" 'BEGIN { exit !(x != "" && lo <= x + 0 && x + 0 <= hi) }'; }

measure_ping() {
    local out avg
    out=$(ip netns exec "$h1" ping -q -n -c 20 -i 0.2 -W 2 10.99.2.2) || die "ping failed: $out"
    avg=$(ping_avg <<<"$out")
    [[ -n $avg ]] || die "no RTT in ping output: $out"
    printf '%s\n' "$avg"
}

[[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
[[ -x $bin ]] || die "no binary at $bin (cargo build -p kadrtc-netdelay, or set NETDELAY_BIN)"
for tool in ip iptables ping curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

log "namespaces $h1 $r $h2"
for ns in "$h1" "$r" "$h2"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$h1" link add eth0 type veth peer name h1 netns "$r"
ip -n "$h2" link add eth0 type veth peer name h2 netns "$r"
ip -n "$h1" addr add 10.99.1.2/24 dev eth0
ip -n "$h2" addr add 10.99.2.2/24 dev eth0
ip -n "$r" addr add 10.99.1.1/24 dev h1
ip -n "$r" addr add 10.99.2.1/24 dev h2
for link in "$h1 eth0" "$h2 eth0" "$r h1" "$r h2"; do
    read -r ns dev <<<"$link"
    ip -n "$ns" link set "$dev" up
done
ip -n "$h1" route add default via 10.99.1.1
ip -n "$h2" route add default via 10.99.2.1
ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$r" iptables -t mangle -A FORWARD -j NFQUEUE --queue-num 0 --queue-bypass

# Servers on h2, started early so they are listening by the time the flows run.
mkdir "$work/www"
printf 'netdelay selftest %s\n' "$$" >"$work/www/probe.txt"
ip netns exec "$h2" python3 -m http.server 8080 --bind 10.99.2.2 --directory "$work/www" \
    >/dev/null 2>&1 &
server_pids+=("$!")
ip netns exec "$h2" python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.99.2.2", 9000))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
' >/dev/null 2>&1 &
server_pids+=("$!")

log "ping without the tool (queue bypassed)"
base_rtt=$(measure_ping)

log "starting $bin --queue 0 --delay-ms $DELAY_MS in $r"
mkfifo "$work/stdout"
exec 3<>"$work/stdout"
ip netns exec "$r" "$bin" --queue 0 --delay-ms "$DELAY_MS" >"$work/stdout" 2>"$work/stderr" &
tool_pid=$!
ready=
read -r -t "$READY_TIMEOUT_S" ready <&3 || true
[[ $ready == "ready queue=0 delay_ms=$DELAY_MS" ]] ||
    die "no ready line within ${READY_TIMEOUT_S}s (got '$ready'): $(cat "$work/stderr")"

log "ping with the tool"
delayed_rtt=$(measure_ping)

log "TCP: HTTP GET h1 -> h2 through the delay"
http_time=$(ip netns exec "$h1" curl -sS --max-time 10 --retry 5 --retry-connrefused \
    --retry-delay 1 -o "$work/got.txt" -w '%{time_total}' http://10.99.2.2:8080/probe.txt) ||
    die "curl failed"
cmp -s "$work/got.txt" "$work/www/probe.txt" || die "HTTP body differs"

log "UDP: 10 echoes h1 -> h2 through the delay"
udp_rtt=$(ip netns exec "$h1" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
rtts = []
for i in range(10):
    payload = b"probe %d" % i
    sent = time.monotonic()
    s.sendto(payload, ("10.99.2.2", 9000))
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        sys.exit("udp echo %d timed out" % i)
    if data != payload:
        sys.exit("udp echo %d came back different" % i)
    rtts.append((time.monotonic() - sent) * 1000)
print("%.3f" % (sum(rtts) / len(rtts)))
') || die "UDP echo failed"

log "stopping the tool with SIGTERM"
kill -TERM "$tool_pid"
tool_rc=0
wait "$tool_pid" || tool_rc=$?
tool_pid=
summary=$(tail -n 1 "$work/stderr")
[[ $tool_rc -eq 0 ]] || die "tool exited $tool_rc: $(cat "$work/stderr")"
[[ $summary == *"stopped by SIGTERM: delayed="* ]] || die "no summary line: $(cat "$work/stderr")"

log "ping after the tool stopped (queue bypassed again)"
after_rtt=$(measure_ping)

printf 'average RTT without delay:  %s ms\n' "$base_rtt"
printf 'average RTT with delay:     %s ms (expected %s..%s)\n' "$delayed_rtt" "$MIN_RTT_MS" "$MAX_RTT_MS"
printf 'average UDP echo RTT:       %s ms\n' "$udp_rtt"
printf 'HTTP GET total time:        %s s\n' "$http_time"
printf 'average RTT after stopping: %s ms\n' "$after_rtt"
printf 'tool summary: %s\n' "$summary"

between 0 "$base_rtt" "$MAX_BASE_RTT_MS" || die "RTT without delay is $base_rtt ms"
between 0 "$after_rtt" "$MAX_BASE_RTT_MS" || die "RTT after stopping is $after_rtt ms"
between "$MIN_RTT_MS" "$delayed_rtt" "$MAX_RTT_MS" || die "delayed RTT is $delayed_rtt ms"
between "$MIN_RTT_MS" "$udp_rtt" "$MAX_RTT_MS" || die "UDP echo RTT is $udp_rtt ms"
log "PASS"
