#!/usr/bin/env bash
# lan.sh — kadrtc's zero-configuration mode on an emulated LAN: two network
# namespaces joined by a veth pair, one `kadrtc join ROOM` in each, no
# --bootstrap. The joiners must find each other by mDNS (multicast DNS on UDP
# 5353, group 224.0.0.251) and open a data channel.
#
#   testnet/lan.sh selftest   run the check (root; iproute2)
#   testnet/lan.sh help       this text (also -h, --help)
#
# All traffic stays inside the two namespaces: they have no link to the host's
# network, so no multicast leaves through the host's interfaces. See
# testnet/README.md ("LAN lab").

set -euo pipefail

# --- constants -----------------------------------------------------------------

# Every address is inside 10.78.0.0/16 (nat.sh uses 10.77.0.0/16).
readonly A_IP=10.78.0.1 B_IP=10.78.0.2 PREFIX_LEN=24
readonly MULTICAST_NET=224.0.0.0/4

# Namespaces are named kl<4 hex digits>-a and -b; teardown removes only the
# two this run created.
readonly NS_PREFIX=kl

readonly POLL_INTERVAL=0.05   # seconds between polls inside deadline loops
readonly READY_TIMEOUT_S=20   # each joiner prints its "ready" line
readonly OPEN_DEADLINE_S=30   # both joiners report channel_open for each other
readonly MESSAGE_TIMEOUT_S=10 # a line written to one joiner arrives at the other
readonly EXIT_TIMEOUT_S=10    # joiners exit after their stdin is closed
readonly STOP_TIMEOUT_S=5     # SIGTERM grace period before SIGKILL
readonly NEGATIVE_WAIT_S=5    # with --no-mdns on both sides, no channel within this
readonly LOG_TAIL_LINES=20

# --- paths -----------------------------------------------------------------------

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
# shellcheck source=testnet/lib.sh
source "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(dirname -- "$SCRIPT_DIR")"
readonly REPO_ROOT
PROG="testnet/$(basename -- "${BASH_SOURCE[0]}")" # for messages
readonly PROG

# State directory: one subdirectory per run (logs), removed when the run passes.
STATE="${KADRTC_LAN_DIR:-${KADRTC_TESTNET_DIR:-$SCRIPT_DIR/.run}/lan}"
[[ $STATE == /* ]] || STATE="$PWD/$STATE"

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"

BIN="" # kadrtc binary (resolve_bin)

# --- state of one run --------------------------------------------------------------

LAB_ID=""       # 4 hex digits naming this run's namespaces
LAB_NS=()       # namespaces created, recorded before they exist
STARTED=()      # PIDs of every background process we started
RUN_DIR=""      # logs and fifos of the current pair of joiners
A_PID="" B_PID="" # the joiners
A_FD="" B_FD=""   # our write ends of their stdin fifos (close_stdins in lib.sh)
A_ID="" B_ID=""   # their peer ids
PASSED=0
DIE_MSG=""

note() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }

ns() { printf '%s%s-%s' "$NS_PREFIX" "$LAB_ID" "$1"; } # ns a|b: a namespace of this run

# --- preflight ---------------------------------------------------------------------

need_root_tools() {
  ((EUID == 0)) || die "the LAN lab creates network namespaces and must run as root (try: sudo $PROG selftest)"
  local cmd
  for cmd in ip grep sed mkfifo; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed (ip: apt-get install iproute2)"
  done
  ip netns list >/dev/null 2>&1 || die "'ip netns' does not work here (no network namespace support?)"
}

# resolve_bin: KADRTC_BIN if set, else the debug build.
resolve_bin() {
  if [[ -n ${KADRTC_BIN:-} ]]; then
    BIN=$KADRTC_BIN
    if [[ $BIN != */* ]]; then
      BIN=$(command -v -- "$BIN" || true)
      [[ -n $BIN ]] || die "KADRTC_BIN='$KADRTC_BIN' not found in PATH"
    fi
    [[ $BIN == /* ]] || BIN="$PWD/$BIN"
    [[ -f $BIN && -x $BIN ]] || die "KADRTC_BIN='$KADRTC_BIN' is not an executable file"
    return 0
  fi
  BIN="$TARGET_DIR/debug/kadrtc"
  [[ -x $BIN ]] || die "kadrtc binary not found at $BIN
  build it with:  cargo build -p kadrtc-node --bin kadrtc
  or point KADRTC_BIN at an existing binary"
}

# --- the lab -----------------------------------------------------------------------

ns_exists() { [[ -e /run/netns/$1 || -e /var/run/netns/$1 ]]; }

# setup_ns a|b IP: namespace a or b with lo up, IPv6 off (no link-local ICE candidates),
# and one end of the veth pair (created by the caller) holding IP; multicast is
# routed out of that veth, where mDNS sends its queries.
setup_ns() {
  local name dev
  name=$(ns "$1") dev=$(ns "$1")
  ip -n "$name" link set lo up
  ip netns exec "$name" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1 || true
  ip -n "$name" addr add "$2/$PREFIX_LEN" dev "$dev" || die "cannot add $2 to $name/$dev"
  ip -n "$name" link set "$dev" up || die "cannot bring up $name/$dev"
  ip -n "$name" route add "$MULTICAST_NET" dev "$dev" || die "cannot route $MULTICAST_NET in $name"
}

# lab_up: two fresh namespaces joined by a veth pair created inside them (the
# host's namespace never sees the interfaces).
lab_up() {
  local tries=0
  while :; do
    LAB_ID=$(printf '%04x' "$((RANDOM % 65536))")
    ns_exists "$(ns a)" || ns_exists "$(ns b)" || break
    ((++tries < 20)) || die "could not pick an unused namespace name"
  done
  LAB_NS+=("$(ns a)")
  ip netns add "$(ns a)" || die "cannot create network namespace $(ns a)"
  LAB_NS+=("$(ns b)")
  ip netns add "$(ns b)" || die "cannot create network namespace $(ns b)"
  ip link add "$(ns a)" netns "$(ns a)" type veth peer name "$(ns b)" netns "$(ns b)" ||
    die "cannot create the veth pair $(ns a) <-> $(ns b)"
  setup_ns a "$A_IP"
  setup_ns b "$B_IP"
}

# stop_joiners: close their stdins (they leave the room and exit), then stop
# whatever is left and reap it.
stop_joiners() {
  local pid
  close_stdins
  kill_all "${STARTED[@]}"
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  STARTED=()
}

# lab_down: every process we started or that still runs inside our namespaces,
# then our two namespaces. Idempotent.
lab_down() {
  local name p pids=()
  close_stdins
  for name in "${LAB_NS[@]}"; do
    ns_exists "$name" || continue
    while read -r p; do [[ $p =~ ^[0-9]+$ ]] && pids+=("$p"); done < <(ip netns pids "$name" 2>/dev/null)
  done
  kill_all "${STARTED[@]}" "${pids[@]}"
  for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
  STARTED=()
  for name in "${LAB_NS[@]}"; do
    ns_exists "$name" || continue
    if ! ip netns delete "$name" 2>/dev/null && ns_exists "$name"; then
      printf '%s: warning: could not delete namespace %s\n' "$PROG" "$name" >&2
    fi
  done
  LAB_NS=()
}

# --- joiners -------------------------------------------------------------------------

# start_joiner a|b EXTRA...: `kadrtc join ROOM --json --listen /ip4/0.0.0.0/tcp/0`
# in namespace a or b, with no --bootstrap; stdin on a fifo we hold open,
# stdout in RUN_DIR/<who>.out, stderr in RUN_DIR/<who>.log.
start_joiner() {
  local who=$1 d=$RUN_DIR pid
  shift
  : >"$d/$who.out"
  : >"$d/$who.log"
  RUST_LOG=${RUST_LOG:-warn,kadrtc_dht=debug,libp2p_mdns=debug} \
    ip netns exec "$(ns "$who")" "$BIN" join "$ROOM" --json --listen /ip4/0.0.0.0/tcp/0 "$@" \
    <"$d/$who.stdin" >"$d/$who.out" 2>"$d/$who.log" {A_FD}>&- {B_FD}>&- &
  pid=$!
  STARTED+=("$pid")
  if [[ $who == a ]]; then A_PID=$pid; else B_PID=$pid; fi
}

# start_pair LABEL EXTRA...: a fresh run directory and room, both joiners started.
start_pair() {
  RUN_DIR="$STATE/$LAB_ID/$1"
  shift
  mkdir -p -- "$RUN_DIR"
  rm -f -- "$RUN_DIR"/{a,b}.{out,log,stdin}
  mkfifo -- "$RUN_DIR/a.stdin" "$RUN_DIR/b.stdin"
  exec {A_FD}<>"$RUN_DIR/a.stdin" {B_FD}<>"$RUN_DIR/b.stdin"
  ROOM="lan-$(printf '%04x%04x%04x' "$RANDOM" "$RANDOM" "$RANDOM")"
  start_joiner a "$@"
  start_joiner b "$@"
}

# show_logs: the tails of both joiners' stdout and stderr.
show_logs() {
  local f
  [[ -n $RUN_DIR && -d $RUN_DIR ]] || return 0
  for f in a.out a.log b.out b.log; do
    tail_file "$f" "$RUN_DIR/$f" >&2
  done
}

# check_alive: fail if a joiner has exited.
check_alive() {
  local who pid status
  for who in a b; do
    if [[ $who == a ]]; then pid=$A_PID; else pid=$B_PID; fi
    pid_alive "$pid" && continue
    status=0
    wait "$pid" 2>/dev/null || status=$?
    die "joiner $who (namespace $(ns "$who")) exited with status $status"
  done
}

# peer_id_of FILE: the peer_id of FILE's ready line (empty if none yet).
peer_id_of() {
  local line
  line=$(grep -m 1 -E '"event"[[:space:]]*:[[:space:]]*"ready"' "$1" 2>/dev/null) || return 0
  sed -nE 's/.*"peer_id"[[:space:]]*:[[:space:]]*"([^"]+)".*/\1/p' <<<"$line"
}

# has_event_from FILE EVENT PEER [TEXT]: FILE has an EVENT line naming PEER
# (and carrying TEXT as its "text", when given).
has_event_from() {
  local lines
  lines=$(grep -E "\"event\"[[:space:]]*:[[:space:]]*\"$2\"" "$1" 2>/dev/null) || return 1
  lines=$(grep -E "\"peer_id\"[[:space:]]*:[[:space:]]*\"$3\"" <<<"$lines") || return 1
  [[ -z ${4:-} ]] || grep -qE "\"text\"[[:space:]]*:[[:space:]]*\"$4\"" <<<"$lines"
}

# wait_ready: both joiners print their ready line -> A_ID, B_ID.
wait_ready() {
  local deadline
  now_ms
  deadline=$((NOW_MS + READY_TIMEOUT_S * 1000))
  A_ID="" B_ID=""
  while [[ -z $A_ID || -z $B_ID ]]; do
    [[ -n $A_ID ]] || A_ID=$(peer_id_of "$RUN_DIR/a.out")
    [[ -n $B_ID ]] || B_ID=$(peer_id_of "$RUN_DIR/b.out")
    [[ -n $A_ID && -n $B_ID ]] && break
    check_alive
    now_ms
    ((NOW_MS < deadline)) || die "a joiner printed no ready line within ${READY_TIMEOUT_S} s"
    sleep "$POLL_INTERVAL"
  done
}

# both_open: each joiner has a channel_open event for the other.
both_open() {
  has_event_from "$RUN_DIR/a.out" channel_open "$B_ID" &&
    has_event_from "$RUN_DIR/b.out" channel_open "$A_ID"
}

# send_and_check FROM_FD FROM_ID TO_FILE TEXT: write TEXT to one joiner's stdin
# and wait until the other reports it as a message from that joiner.
send_and_check() {
  local fd=$1 from=$2 file=$3 text=$4 deadline
  printf '%s\n' "$text" >&"$fd"
  now_ms
  deadline=$((NOW_MS + MESSAGE_TIMEOUT_S * 1000))
  until has_event_from "$file" message "$from" "$text"; do
    check_alive
    now_ms
    ((NOW_MS < deadline)) || die "\"$text\" did not arrive within ${MESSAGE_TIMEOUT_S} s"
    sleep "$POLL_INTERVAL"
  done
}

# --- selftest ----------------------------------------------------------------------

selftest_on_exit() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if ((!PASSED)); then
    printf '%s: selftest FAILED: %s\n' "$PROG" "${DIE_MSG:-exit status $rc}" >&2
    show_logs
    [[ -n $RUN_DIR ]] && printf '%s: logs kept in %s\n' "$PROG" "$(dirname -- "$RUN_DIR")" >&2
  fi
  lab_down
  ((PASSED)) && [[ -n $LAB_ID ]] && rm -rf -- "${STATE:?}/$LAB_ID"
  ((rc != 0 || PASSED)) || rc=1
  exit "$rc"
}

cmd_selftest() {
  (($# == 0)) || die "selftest takes no arguments (got: $*)"
  need_root_tools
  resolve_bin
  trap selftest_on_exit EXIT
  trap 'DIE_MSG="interrupted"; exit 130' INT
  trap 'DIE_MSG="terminated"; exit 143' TERM

  lab_up
  step "LAN lab: namespaces $(ns a) ($A_IP) and $(ns b) ($B_IP) on one veth pair; binary $BIN"

  # 1. mDNS on (the default without --bootstrap): both find each other and connect.
  local t0 deadline open_ms
  now_ms
  t0=$NOW_MS
  start_pair mdns
  note "two joiners in room $ROOM, no --bootstrap"
  wait_ready
  note "a is $A_ID"
  note "b is $B_ID"
  deadline=$((t0 + OPEN_DEADLINE_S * 1000))
  until both_open; do
    check_alive
    now_ms
    ((NOW_MS < deadline)) || die "no channel_open for each other within ${OPEN_DEADLINE_S} s of starting the joiners"
    sleep "$POLL_INTERVAL"
  done
  now_ms
  open_ms=$((NOW_MS - t0))
  note "channel open both ways ${open_ms} ms after starting the joiners (polled every ${POLL_INTERVAL} s)"

  local nonce
  nonce=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
  send_and_check "$A_FD" "$A_ID" "$RUN_DIR/b.out" "hello from a $nonce"
  send_and_check "$B_FD" "$B_ID" "$RUN_DIR/a.out" "hello from b $nonce"
  note "a line each way over the data channel: OK"
  close_stdins
  wait_gone "$EXIT_TIMEOUT_S" "$A_PID" "$B_PID" || die "the joiners did not exit within ${EXIT_TIMEOUT_S} s of their stdin closing"
  local who pid status
  for who in a b; do
    if [[ $who == a ]]; then pid=$A_PID; else pid=$B_PID; fi
    status=0
    wait "$pid" 2>/dev/null || status=$?
    ((status == 0)) || die "joiner $who exited with status $status after its stdin closed"
  done
  note "both left the room and exited with status 0"
  STARTED=() # both reaped: their PIDs may be reused

  # 2. With --no-mdns on both sides (and no bootstrap), nothing connects them.
  start_pair no-mdns --no-mdns
  wait_ready
  now_ms
  deadline=$((NOW_MS + NEGATIVE_WAIT_S * 1000))
  while ((NOW_MS < deadline)); do
    if has_event "$RUN_DIR/a.out" channel_open || has_event "$RUN_DIR/b.out" channel_open ||
      has_event "$RUN_DIR/a.out" peer_discovered || has_event "$RUN_DIR/b.out" peer_discovered; then
      die "with --no-mdns the joiners still met"
    fi
    check_alive
    sleep "$POLL_INTERVAL"
    now_ms
  done
  note "with --no-mdns on both: no peer found within ${NEGATIVE_WAIT_S} s: OK"
  stop_joiners

  PASSED=1
  printf 'lan selftest: OK (mDNS: channel_open %d ms after start)\n' "$open_ms"
}

usage() {
  cat <<EOF
usage: $PROG selftest | help

selftest  As root: create two network namespaces ${NS_PREFIX}XXXX-a ($A_IP) and
          ${NS_PREFIX}XXXX-b ($B_IP) joined by a veth pair, run
          \`kadrtc join ROOM --json --listen /ip4/0.0.0.0/tcp/0\` in each with no
          --bootstrap (so mDNS is on), and check within ${OPEN_DEADLINE_S} s that both
          report channel_open for each other and that a line written to each one's
          stdin arrives at the other. Then check that with --no-mdns the two do not
          meet within ${NEGATIVE_WAIT_S} s. Prints the time to channel_open. Removes
          its processes and its two namespaces on any exit.

Environment:
  KADRTC_BIN       kadrtc binary (default: \$CARGO_TARGET_DIR or target/debug/kadrtc)
  KADRTC_LAN_DIR   logs (default testnet/.run/lan; a run's logs stay only if it fails)
  RUST_LOG         the joiners' log filter (default warn,kadrtc_dht=debug,libp2p_mdns=debug)
EOF
}

main() {
  local cmd=${1:-help}
  (($# == 0)) || shift
  case $cmd in
  selftest) cmd_selftest "$@" ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
