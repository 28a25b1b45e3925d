#!/usr/bin/env bash
# testnet.sh — run a local kadrtc DHT testnet on 127.0.0.1 and demo two peers
# meeting in a room through it.
#
#   testnet/testnet.sh up [N]      start N DHT nodes (default 5, 1..50)
#   testnet/testnet.sh down        stop the nodes started by `up`
#   testnet/testnet.sh status      show the nodes of the running testnet
#   testnet/testnet.sh demo [ROOM] build, start a private 5-node testnet, let
#                                  two joiners meet and exchange a message
#   testnet/testnet.sh measure [RUNS]
#                                  build, start a private 5-node testnet, time
#                                  RUNS joiner pairs until channel_open
#
# See testnet/README.md for the state directory layout and environment variables.

set -euo pipefail

# --- constants -----------------------------------------------------------------

readonly LISTEN_ADDR=/ip4/127.0.0.1/tcp/0 # OS-assigned port, loopback only
readonly DEFAULT_NODES=5
readonly MAX_NODES=50
readonly POLL_INTERVAL=0.05        # seconds between polls inside deadline loops
readonly NODE_READY_TIMEOUT_S=20   # per node, for its "ready" line
readonly STOP_TIMEOUT_S=5          # SIGTERM grace period before SIGKILL
readonly DEMO_CHANNEL_TIMEOUT_S=60 # both joiners report channel_open
readonly DEMO_MESSAGE_TIMEOUT_S=20 # both hellos delivered
readonly DEMO_EXIT_TIMEOUT_S=10    # joiners exit after their stdin is closed
readonly DEFAULT_MEASURE_RUNS=10
readonly MAX_MEASURE_RUNS=200
readonly LOG_TAIL_LINES=20

# --- paths -----------------------------------------------------------------------

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
# shellcheck source=testnet/lib.sh
source "$SCRIPT_DIR/lib.sh"
SELF="$SCRIPT_DIR/$(basename -- "${BASH_SOURCE[0]}")"
readonly SELF
REPO_ROOT="$(dirname -- "$SCRIPT_DIR")"
readonly REPO_ROOT
PROG="testnet/$(basename -- "${BASH_SOURCE[0]}")" # for messages
readonly PROG

# State directory: pids, addrs, bootstrap.addr, node logs.
STATE="${KADRTC_TESTNET_DIR:-$SCRIPT_DIR/.run}"
[[ $STATE == /* ]] || STATE="$PWD/$STATE"

# Cargo's target dir (honours CARGO_TARGET_DIR; relative paths are taken
# relative to the repo root, where we run cargo).
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"

BIN="" # resolved kadrtc binary, set by resolve_bin / build_bin

# --- embedded python helpers (python3 is required; jq is not) ---------------------

# Find the first {"event":"ready",...} line in a node's stdout file and print
# "<peer_id>\t<listen addr>". Prefers a 127.0.0.1 address; appends /p2p/<id>
# if the address lacks it. Exit 1: no ready line yet; exit 2: malformed.
readonly PY_READY='
import json, sys
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for raw in f:
        raw = raw.strip()
        # joiner output files carry a "<ms> " prefix; node files do not
        if not raw.startswith("{"):
            raw = raw.partition(" ")[2]
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict) or ev.get("event") != "ready":
            continue
        peer = ev.get("peer_id")
        addrs = [a for a in (ev.get("listen") or []) if isinstance(a, str) and a]
        if not isinstance(peer, str) or not peer or not addrs:
            sys.exit(2)
        local = [a for a in addrs if a.startswith("/ip4/127.0.0.1/")]
        addr = (local or addrs)[0]
        if "/p2p/" not in addr:
            addr += "/p2p/" + peer
        print(peer + "\t" + addr)
        sys.exit(0)
sys.exit(1)
'

# Exit 0 iff a timestamped joiner output file contains
# {"event":"message","text":<argv[2]>}.
readonly PY_HAS_MESSAGE='
import json, sys
want = sys.argv[2]
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for raw in f:
        try:
            ev = json.loads(raw.partition(" ")[2])
        except ValueError:
            continue
        if (isinstance(ev, dict) and ev.get("event") == "message"
                and str(ev.get("text", "")).rstrip("\r\n") == want):
            sys.exit(0)
sys.exit(1)
'

# Print the elapsed_ms of the first {"event":"channel_open",...} line in a
# timestamped joiner output file. Exit 1: no such line; exit 2: elapsed_ms is
# not a non-negative integer.
readonly PY_ELAPSED='
import json, sys
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for raw in f:
        try:
            ev = json.loads(raw.partition(" ")[2])
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == "channel_open":
            ms = ev.get("elapsed_ms")
            if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
                sys.exit(2)
            print(ms)
            sys.exit(0)
sys.exit(1)
'

# Summarise a measurement. argv: OUT_JSON BINARY RUNS A_VALUES B_VALUES (the
# values space-separated, run order). Prints a table of count / median / p90 /
# max / min for A, B and both, and writes OUT_JSON (atomically). Median: the
# usual one (mean of the two middle values for an even count); p90: nearest
# rank (the ceil(0.9*n)-th smallest value, always an observed value).
readonly PY_MEASURE_SUMMARY='
import datetime, json, math, os, statistics, sys
out, binary, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = [int(v) for v in sys.argv[4].split()]
b = [int(v) for v in sys.argv[5].split()]
both = [v for pair in zip(a, b) for v in pair]  # A1, B1, A2, B2, ...
def num(x):
    return int(x) if float(x).is_integer() else round(x, 1)
def stats(vals):
    s = sorted(vals)
    return {"count": len(s), "median_ms": num(statistics.median(s)),
            "p90_ms": s[math.ceil(0.9 * len(s)) - 1], "max_ms": s[-1], "min_ms": s[0]}
rows = [("A (node 2)", stats(a)), ("B (node 4)", stats(b)), ("A+B", stats(both))]
print("channel_open elapsed_ms over %d run(s) (ms from each joiner'"'"'s join to its open data channel):" % runs)
print("  %-11s %6s %8s %8s %8s %8s" % ("joiner", "count", "median", "p90", "max", "min"))
for name, st in rows:
    print("  %-11s %6d %8s %8d %8d %8d" % (name, st["count"], st["median_ms"],
                                          st["p90_ms"], st["max_ms"], st["min_ms"]))
total = rows[2][1]
doc = {
    "runs": runs,
    "values_ms": both,
    "median_ms": total["median_ms"],
    "p90_ms": total["p90_ms"],
    "max_ms": total["max_ms"],
    "min_ms": total["min_ms"],
    "binary": os.path.abspath(binary),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "joiners": {
        "A": dict(bootstrap_node=2, values_ms=a, **{k: v for k, v in rows[0][1].items() if k != "count"}),
        "B": dict(bootstrap_node=4, values_ms=b, **{k: v for k, v in rows[1][1].items() if k != "count"}),
    },
}
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, out)
'

# Print the demo timeline. argv: T0_MS ADDRS_FILE then LABEL FILE pairs; each
# FILE holds "<epoch ms> <json or text>" lines. Label "*" is the script's own
# actions (plain text). Peer ids are shortened and named when known
# (A/B from their ready events, nodeK from the addrs file).
readonly PY_TIMELINE='
import json, sys
t0, addrs_file, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
names, rows = {}, []
try:
    with open(addrs_file, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if "/p2p/" in line:
                names[line.strip().rsplit("/p2p/", 1)[1]] = "node%d" % k
except OSError:
    pass
for i in range(0, len(rest) - 1, 2):
    label, path = rest[i], rest[i + 1]
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        continue
    with f:
        for n, raw in enumerate(f):
            ts, _, text = raw.rstrip("\r\n").partition(" ")
            try:
                ts = int(ts)
            except ValueError:
                continue
            ev = None
            if label != "*":
                try:
                    ev = json.loads(text)
                except ValueError:
                    pass
                if (isinstance(ev, dict) and ev.get("event") == "ready"
                        and isinstance(ev.get("peer_id"), str)):
                    names.setdefault(ev["peer_id"], label)
            rows.append((ts, i, n, label, text, ev))
def peer(p):
    if not isinstance(p, str) or not p:
        return "?"
    s = p if len(p) <= 20 else p[:8] + "\u2026" + p[-6:]
    return s + (" (" + names[p] + ")" if p in names else "")
rows.sort(key=lambda r: r[:3])
for ts, _, _, label, text, ev in rows:
    if label == "*":
        name, detail = "script", text
    elif not isinstance(ev, dict):
        name, detail = "(not json)", text
    else:
        name = str(ev.get("event", "?"))
        p = peer(ev.get("peer_id"))
        if name == "ready":
            detail = p
        elif name == "peer_discovered":
            detail = p + " via " + str(ev.get("via", "?"))
        elif name == "channel_open":
            detail = p + " (elapsed " + str(ev.get("elapsed_ms", "?")) + " ms)"
        elif name == "message":
            detail = "from " + p + ": " + str(ev.get("text", ""))
        elif name == "peer_left":
            detail = p
        elif name == "error":
            detail = str(ev.get("message", ""))
        else:
            detail = text
    print("  +%5d ms  %s  %-16s %s" % (ts - t0, label, name, detail))
'

# --- small utilities ---------------------------------------------------------------

# die MSG: print an error and exit 1 (the EXIT traps of up/demo report MSG too).
DIE_MSG=""

note() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }

need() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed"
  done
}

# is_kadrtc_node PID: the live process is a `kadrtc node` (guards against
# killing an unrelated process that reused a recorded PID).
is_kadrtc_node() {
  local args=() a named=0 node=0
  pid_alive "$1" || return 1
  mapfile -d '' -t args 2>/dev/null <"/proc/$1/cmdline" || return 1
  for a in "${args[@]}"; do
    [[ $a == *kadrtc* ]] && named=1
    [[ $a == node ]] && node=1
  done
  ((named && node))
}

# read_pids FILE: load the numeric PIDs listed in FILE into PIDS.
PIDS=()
read_pids() {
  PIDS=()
  [[ -f $1 ]] || return 0
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[0-9]+$ ]] && PIDS+=("$line")
  done <"$1"
}

# running_nodes: PIDs from $STATE/pids that are still kadrtc nodes -> RUNNING.
RUNNING=()
running_nodes() {
  local pid
  RUNNING=()
  read_pids "$STATE/pids"
  for pid in "${PIDS[@]}"; do
    if is_kadrtc_node "$pid"; then RUNNING+=("$pid"); fi
  done
}

# stop_pids [--any] PID...: SIGTERM each live process (only kadrtc nodes unless
# --any), wait up to STOP_TIMEOUT_S for all of them, then SIGKILL survivors.
# Sets STOPPED (signalled) and KILLED (needed SIGKILL).
STOPPED=0
KILLED=0
stop_pids() {
  local any=0 pid deadline targets=() left=()
  if [[ ${1:-} == --any ]]; then
    any=1
    shift
  fi
  for pid in "$@"; do
    if ((any)); then pid_alive "$pid" || continue; else is_kadrtc_node "$pid" || continue; fi
    if kill -TERM "$pid" 2>/dev/null; then targets+=("$pid"); fi
  done
  STOPPED=${#targets[@]}
  KILLED=0
  now_ms
  deadline=$((NOW_MS + STOP_TIMEOUT_S * 1000))
  while ((${#targets[@]} > 0)); do
    left=()
    for pid in "${targets[@]}"; do
      if pid_alive "$pid"; then left+=("$pid"); fi
    done
    ((${#left[@]} > 0)) || break
    now_ms
    if ((NOW_MS >= deadline)); then
      kill -KILL "${left[@]}" 2>/dev/null || true
      KILLED=${#left[@]}
      break
    fi
    sleep "$POLL_INTERVAL"
  done
}

# --- binary -------------------------------------------------------------------------

# resolve_bin: KADRTC_BIN if set, else the release build, else the debug build.
resolve_bin() {
  if [[ -n ${KADRTC_BIN:-} ]]; then
    BIN=$KADRTC_BIN
    if [[ $BIN != */* ]]; then # a bare name: look it up in PATH
      BIN=$(command -v -- "$BIN" || true)
      [[ -n $BIN ]] || die "KADRTC_BIN='$KADRTC_BIN' not found in PATH"
    fi
    [[ -f $BIN && -x $BIN ]] || die "KADRTC_BIN='$KADRTC_BIN' is not an executable file"
    return 0
  fi
  BIN="$TARGET_DIR/release/kadrtc"
  if [[ ! -x $BIN && -x $TARGET_DIR/debug/kadrtc ]]; then
    BIN="$TARGET_DIR/debug/kadrtc"
    note "note: no release build found, using the debug build $BIN" >&2
  fi
  [[ -x $BIN ]] || die "kadrtc binary not found at $TARGET_DIR/release/kadrtc
  build it with:  cargo build --release -p kadrtc-node --bin kadrtc
  or point KADRTC_BIN at an existing binary"
}

# build_bin: for `demo`/`measure` — build the release binary unless KADRTC_BIN is set.
build_bin() {
  if [[ -n ${KADRTC_BIN:-} ]]; then
    resolve_bin
    step "using KADRTC_BIN=$BIN (not building)"
    return 0
  fi
  need cargo
  step "building kadrtc (release)…"
  (cd -- "$REPO_ROOT" && cargo build --release -p kadrtc-node --bin kadrtc) ||
    die "cargo build failed"
  BIN="$TARGET_DIR/release/kadrtc"
  [[ -x $BIN ]] || die "cargo build succeeded but $BIN does not exist"
}

# down_hint: the command that stops the testnet in $STATE.
down_hint() {
  if [[ -n ${KADRTC_TESTNET_DIR:-} ]]; then
    printf 'KADRTC_TESTNET_DIR=%q %s down' "$KADRTC_TESTNET_DIR" "$PROG"
  else
    printf '%s down' "$PROG"
  fi
}

# --- up -------------------------------------------------------------------------------

UP_STARTED=()  # PIDs started by this `up`
UP_FAILED_NODE=0 # node whose log to show on failure (the one being started)
UP_FAIL_MSG=""
UP_DONE=0

# up_on_exit: EXIT trap for `up` — if we did not finish, stop every node we
# started, show the failing node's log and leave no half testnet behind.
up_on_exit() {
  local rc=$?
  set +e
  ((UP_DONE)) && return 0
  ((rc != 0)) || rc=1
  printf '%s: up: FAILED: %s\n' "$PROG" "${UP_FAIL_MSG:-${DIE_MSG:-unexpected error (exit status $rc)}}" >&2
  if ((UP_FAILED_NODE > 0)); then
    tail_file "node $UP_FAILED_NODE stderr" "$STATE/node-$UP_FAILED_NODE.log" >&2
    if [[ -s $STATE/node-$UP_FAILED_NODE.out ]]; then
      tail_file "node $UP_FAILED_NODE stdout" "$STATE/node-$UP_FAILED_NODE.out" >&2
    fi
  fi
  if ((${#UP_STARTED[@]} > 0)); then
    printf 'stopping the %d node(s) started so far…\n' "${#UP_STARTED[@]}" >&2
    stop_pids "${UP_STARTED[@]}"
  fi
  rm -f -- "$STATE/pids" "$STATE/addrs" "$STATE/bootstrap.addr"
  exit "$rc"
}

# up_fail NODE MSG: record what went wrong (for the EXIT trap) and exit.
up_fail() {
  UP_FAILED_NODE=$1
  UP_FAIL_MSG=$2
  exit 1
}

# start_node K [BOOTSTRAP]: spawn node K in the background, record its PID.
# Sets NODE_PID.
NODE_PID=0
start_node() {
  local k=$1 boot=${2:-}
  # Several nodes share this host: each answers STUN on a port of its own.
  local args=(node --ephemeral --listen "$LISTEN_ADDR" --stun-port 0 --json)
  # Without a bootstrap node kadrtc would look for peers by mDNS on every interface: the
  # testnet stays on 127.0.0.1.
  if [[ -n $boot ]]; then args+=(--bootstrap "$boot"); else args+=(--no-mdns); fi
  "$BIN" "${args[@]}" </dev/null >"$STATE/node-$k.out" 2>"$STATE/node-$k.log" &
  NODE_PID=$!
  UP_STARTED+=("$NODE_PID")
  printf '%s\n' "$NODE_PID" >>"$STATE/pids" # written at once so `down` always sees it
}

# wait_node_ready K PID: poll node K's stdout until it prints its ready line
# (deadline NODE_READY_TIMEOUT_S); fail fast if the process dies.
# Sets READY_PEER and READY_ADDR.
READY_PEER=""
READY_ADDR=""
wait_node_ready() {
  local k=$1 pid=$2
  local out="$STATE/node-$k.out" deadline parsed rc status
  now_ms
  deadline=$((NOW_MS + NODE_READY_TIMEOUT_S * 1000))
  while :; do
    if grep -qE '"event"[[:space:]]*:[[:space:]]*"ready"' "$out" 2>/dev/null; then
      rc=0
      parsed=$(python3 -c "$PY_READY" "$out") || rc=$?
      if ((rc == 0)); then
        IFS=$'\t' read -r READY_PEER READY_ADDR <<<"$parsed"
        return 0
      elif ((rc == 2)); then
        up_fail "$k" "node $k printed a ready line without peer_id/listen addresses"
      fi
    fi
    if ! pid_alive "$pid"; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      up_fail "$k" "node $k exited (status $status) before printing its ready line"
    fi
    now_ms
    if ((NOW_MS >= deadline)); then
      up_fail "$k" "node $k did not print a ready line within ${NODE_READY_TIMEOUT_S} s"
    fi
    sleep "$POLL_INTERVAL"
  done
}

cmd_up() {
  (($# <= 1)) || die "usage: $PROG up [N]"
  local n=$DEFAULT_NODES k boot peers=() addrs=()
  if (($# == 1)); then n=$1; fi
  if ! [[ $n =~ ^[0-9]{1,3}$ ]] || ((10#$n < 1 || 10#$n > MAX_NODES)); then
    die "up: N must be a whole number from 1 to $MAX_NODES (got '$n')"
  fi
  n=$((10#$n))
  need python3 grep
  resolve_bin
  mkdir -p -- "$STATE"

  # Refuse to start a second testnet on top of a running one.
  running_nodes
  if ((${#RUNNING[@]} > 0)); then
    die "a testnet is already running in $STATE (${#RUNNING[@]} node(s)); stop it first with: $(down_hint)"
  fi
  if [[ -f $STATE/pids ]]; then
    note "note: removing stale state of a previous testnet (none of its nodes is running)"
  fi
  rm -f -- "$STATE/pids" "$STATE/addrs" "$STATE/bootstrap.addr" "$STATE"/node-*.out "$STATE"/node-*.log

  # From here on, any failure or signal rolls back everything we started.
  trap up_on_exit EXIT
  trap 'UP_FAIL_MSG="interrupted"; exit 130' INT
  trap 'UP_FAIL_MSG="terminated"; exit 143' TERM

  step "starting $n kadrtc node(s) on 127.0.0.1 (state: $STATE)"
  : >"$STATE/pids"
  : >"$STATE/addrs"
  for ((k = 1; k <= n; k++)); do
    # Node 1 is the bootstrap node; every other node bootstraps from it.
    UP_FAILED_NODE=$k
    start_node "$k" "${boot:-}"
    wait_node_ready "$k" "$NODE_PID"
    peers+=("$READY_PEER")
    addrs+=("$READY_ADDR")
    printf '%s\n' "$READY_ADDR" >>"$STATE/addrs"
    if ((k == 1)); then
      boot=$READY_ADDR
      printf '%s\n' "$boot" >"$STATE/bootstrap.addr"
      note "bootstrap address: $boot"
    fi
    note "node $k/$n ready (pid $NODE_PID, peer $READY_PEER)"
  done
  UP_DONE=1
  UP_FAILED_NODE=0
  trap - EXIT INT TERM

  # Summary table.
  printf '\n%-5s %-54s %s\n' "node" "peer id" "listen address"
  for ((k = 1; k <= n; k++)); do
    printf '%-5s %-54s %s\n' "$k" "${peers[k - 1]}" "${addrs[k - 1]}"
  done
  printf '\ntestnet up: %d node(s). bootstrap address in %s\n' "$n" "$STATE/bootstrap.addr"
  printf 'stop it with: %s\n' "$(down_hint)"
}

# --- down -------------------------------------------------------------------------------

# stop_testnet: stop exactly the nodes listed in $STATE/pids and forget them.
# Idempotent. Node logs are kept for inspection until the next `up`.
stop_testnet() {
  if [[ ! -f $STATE/pids ]]; then
    note "no testnet running (in $STATE)"
    return 0
  fi
  read_pids "$STATE/pids"
  stop_pids "${PIDS[@]}"
  rm -f -- "$STATE/pids" "$STATE/addrs" "$STATE/bootstrap.addr"
  if ((STOPPED == 0)); then
    note "no testnet running (removed stale state in $STATE)"
  elif ((KILLED > 0)); then
    note "testnet stopped: $STOPPED node(s), $KILLED of them needed SIGKILL after ${STOP_TIMEOUT_S} s"
  else
    note "testnet stopped: $STOPPED node(s)"
  fi
}

cmd_down() {
  (($# == 0)) || die "usage: $PROG down"
  stop_testnet
}

# --- status -------------------------------------------------------------------------------

# Exit 0 if every recorded node is running, 1 if none is recorded or some died.
cmd_status() {
  (($# == 0)) || die "usage: $PROG status"
  if [[ ! -f $STATE/pids ]]; then
    note "no testnet running (in $STATE)"
    return 1
  fi
  local addrs=() k=0 pid state addr peer alive=0
  read_pids "$STATE/pids"
  if [[ -f $STATE/addrs ]]; then mapfile -t addrs <"$STATE/addrs"; fi
  note "testnet in $STATE"
  if [[ -f $STATE/bootstrap.addr ]]; then note "bootstrap address: $(<"$STATE/bootstrap.addr")"; fi
  printf '\n%-5s %-8s %-8s %-54s %s\n' "node" "pid" "state" "peer id" "listen address"
  for pid in "${PIDS[@]}"; do
    k=$((k + 1))
    if is_kadrtc_node "$pid"; then
      state=running
      alive=$((alive + 1))
    else
      state=dead
    fi
    addr=${addrs[k - 1]:-}
    peer=-
    [[ $addr == */p2p/* ]] && peer=${addr##*/p2p/}
    printf '%-5s %-8s %-8s %-54s %s\n' "$k" "$pid" "$state" "$peer" "${addr:--}"
  done
  printf '\n%d of %d node(s) running\n' "$alive" "${#PIDS[@]}"
  ((${#PIDS[@]} > 0 && alive == ${#PIDS[@]}))
}

# --- demo (and the joiner machinery `measure` shares) ----------------------------------------

DEMO_MODE=demo     # "demo" or "measure": names the command in messages
DEMO_DIR=""        # the command's private state dir ($STATE/demo or $STATE/measure)
DEMO_UP_PID=""     # the `up 5` subprocess while it runs
A_PID="" B_PID=""  # joiners
FA_PID="" FB_PID="" # timestamp filters
A_FD="" B_FD=""    # our write ends of the joiners' stdin fifos
A_PEER="" B_PEER=""
DEMO_T0=0
DEMO_ADDRS=()
DEMO_OK=0
DEMO_TORN_DOWN=0
DEMO_FAIL_MSG=""
DEMO_FAIL_PREFIX="" # measure: "run I/RUNS: " while a run is in progress

# mark TEXT: record one of the script's own actions in the timeline.
mark() {
  now_ms
  printf '%s %s\n' "$NOW_MS" "$*" >>"$DEMO_DIR/script.events"
}

# demo_fail MSG: record the failure for the EXIT trap and exit 1.
demo_fail() {
  DEMO_FAIL_MSG=$1
  exit 1
}

# demo_teardown: stop everything the demo (or measure) started, processes first:
# joiners, timestamp filters, a still-running `up`, then the nodes.
demo_teardown() {
  ((DEMO_TORN_DOWN)) && return 0
  DEMO_TORN_DOWN=1
  close_stdins
  local joiners=() filters=()
  [[ -n $A_PID ]] && joiners+=("$A_PID")
  [[ -n $B_PID ]] && joiners+=("$B_PID")
  [[ -n $FA_PID ]] && filters+=("$FA_PID")
  [[ -n $FB_PID ]] && filters+=("$FB_PID")
  if ((${#joiners[@]} > 0)); then stop_pids --any "${joiners[@]}"; fi
  if ((${#filters[@]} > 0)); then stop_pids --any "${filters[@]}"; fi
  if [[ -n $DEMO_UP_PID ]]; then
    # `up` rolls itself back on SIGTERM; wait for it so no node is left behind.
    kill -TERM "$DEMO_UP_PID" 2>/dev/null || true
    wait "$DEMO_UP_PID" 2>/dev/null || true
    DEMO_UP_PID=""
  fi
  if [[ -n $DEMO_DIR ]]; then
    if [[ -f $DEMO_DIR/pids ]]; then
      step "stopping the $DEMO_MODE testnet"
      STATE=$DEMO_DIR stop_testnet
    fi
    rm -f -- "$DEMO_DIR"/{A,B}.stdin "$DEMO_DIR"/{A,B}.pipe
  fi
}

# print_timeline: every event of both joiners plus the script's actions,
# ordered by arrival time, in ms since the joiners were started.
print_timeline() {
  ((DEMO_T0 > 0)) || return 0
  printf '\ntimeline (ms since the joiners were started; A bootstrapped from node 2, B from node 4):\n'
  PYTHONIOENCODING=utf-8 python3 -c "$PY_TIMELINE" "$DEMO_T0" "$DEMO_DIR/addrs.demo" \
    A "$DEMO_DIR/A.out" B "$DEMO_DIR/B.out" '*' "$DEMO_DIR/script.events" ||
    printf '(could not render the timeline)\n'
  printf '\n'
}

# demo_on_exit: EXIT trap — tear down, and on failure explain what happened.
demo_on_exit() {
  local rc=$?
  set +e
  demo_teardown
  ((DEMO_OK)) && exit 0
  ((rc != 0)) || rc=1
  {
    DEMO_FAIL_MSG=$DEMO_FAIL_PREFIX${DEMO_FAIL_MSG:-${DIE_MSG:-unexpected error (exit status $rc)}}
    printf '\n%s: FAILED: %s\n' "$DEMO_MODE" "$DEMO_FAIL_MSG"
    print_timeline
    local f k
    for f in A B; do
      [[ -e $DEMO_DIR/$f.log ]] && tail_file "joiner $f stderr" "$DEMO_DIR/$f.log"
    done
    for ((k = 1; k <= 5; k++)); do
      [[ -e $DEMO_DIR/node-$k.log ]] && tail_file "node $k stderr" "$DEMO_DIR/node-$k.log"
    done
    if [[ $DEMO_MODE == measure ]]; then
      printf 'measure: %d of %d run(s) completed before the failure\n' "${#MEASURE_A[@]}" "$MEASURE_RUNS"
    fi
    printf '%s: FAILED: %s (files kept in %s)\n' "$DEMO_MODE" "$DEMO_FAIL_MSG" "$DEMO_DIR"
  } >&2
  exit "$rc"
}

# check_joiners: fail fast if a joiner exited while we are still waiting on it.
check_joiners() {
  local who pid status
  for who in A B; do
    if [[ $who == A ]]; then pid=$A_PID; else pid=$B_PID; fi
    if ! pid_alive "$pid"; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      demo_fail "joiner $who exited unexpectedly (status $status)"
    fi
  done
}

# demo_wait TIMEOUT_S WHAT CMD...: poll CMD until it succeeds; fail on timeout
# or when a joiner dies. The failure message names who is still missing via
# the optional function in DEMO_WAIT_DETAIL.
DEMO_WAIT_DETAIL=""
demo_wait() {
  local timeout=$1 what=$2 deadline detail=""
  shift 2
  now_ms
  deadline=$((NOW_MS + timeout * 1000))
  until "$@"; do
    check_joiners
    now_ms
    if ((NOW_MS >= deadline)); then
      [[ -n $DEMO_WAIT_DETAIL ]] && detail=" ($($DEMO_WAIT_DETAIL))"
      demo_fail "timed out after ${timeout} s waiting for $what$detail"
    fi
    sleep "$POLL_INTERVAL"
  done
}

# has_message FILE TEXT: FILE has a message event whose text is exactly TEXT.
has_message() {
  grep -qF -- "$2" "$1" 2>/dev/null && python3 -c "$PY_HAS_MESSAGE" "$1" "$2"
}

both_channels_open() {
  has_event "$DEMO_DIR/A.out" channel_open && has_event "$DEMO_DIR/B.out" channel_open
}
channels_detail() {
  local a=no b=no
  has_event "$DEMO_DIR/A.out" channel_open && a=yes
  has_event "$DEMO_DIR/B.out" channel_open && b=yes
  printf 'channel_open seen: A=%s, B=%s' "$a" "$b"
}

both_messages_arrived() {
  has_message "$DEMO_DIR/B.out" "hello from A" && has_message "$DEMO_DIR/A.out" "hello from B"
}
messages_detail() {
  local a=no b=no
  has_message "$DEMO_DIR/B.out" "hello from A" && b=yes
  has_message "$DEMO_DIR/A.out" "hello from B" && a=yes
  printf 'B got "hello from A": %s, A got "hello from B": %s' "$b" "$a"
}

joiners_exited() { ! pid_alive "$A_PID" && ! pid_alive "$B_PID"; }

# start_joiner WHO NODE: run `kadrtc join` with its stdin on a fifo we
# hold open, and its stdout through a timestamping filter into WHO.out.
start_joiner() {
  local who=$1 node=$2
  local boot=${DEMO_ADDRS[node - 1]} d=$DEMO_DIR
  # The filter must not inherit our stdin fds, or the joiners would never
  # see EOF when we close ours; same for the joiner itself.
  stamp_lines <"$d/$who.pipe" >"$d/$who.out" {A_FD}>&- {B_FD}>&- &
  if [[ $who == A ]]; then FA_PID=$!; else FB_PID=$!; fi
  "$BIN" join "$ROOM" --bootstrap "$boot" --listen "$LISTEN_ADDR" --json \
    <"$d/$who.stdin" >"$d/$who.pipe" 2>"$d/$who.log" {A_FD}>&- {B_FD}>&- &
  if [[ $who == A ]]; then A_PID=$!; else B_PID=$!; fi
  mark "started joiner $who (pid $!, bootstrap: node $node)"
}

# finish_joiners: after their stdin was closed, wait up to DEMO_EXIT_TIMEOUT_S
# for both joiners to exit, fail unless both exit 0, then wait for their
# timestamp filters so the output files are complete. Forgets the PIDs of
# whatever has ended (so teardown never signals a reused PID).
finish_joiners() {
  local deadline who pid status
  now_ms
  deadline=$((NOW_MS + DEMO_EXIT_TIMEOUT_S * 1000))
  until joiners_exited; do
    now_ms
    if ((NOW_MS >= deadline)); then
      local still=()
      pid_alive "$A_PID" && still+=(A)
      pid_alive "$B_PID" && still+=(B)
      demo_fail "joiner(s) ${still[*]} still running ${DEMO_EXIT_TIMEOUT_S} s after stdin was closed"
    fi
    sleep "$POLL_INTERVAL"
  done
  for who in A B; do
    if [[ $who == A ]]; then pid=$A_PID; else pid=$B_PID; fi
    status=0
    wait "$pid" 2>/dev/null || status=$?
    if [[ $who == A ]]; then A_PID=""; else B_PID=""; fi
    ((status == 0)) || demo_fail "joiner $who exited with status $status after stdin was closed (expected 0)"
  done
  # The filters end at EOF of the joiners' stdout; wait for them so the output
  # files are complete (bounded by teardown, which kills stragglers).
  now_ms
  deadline=$((NOW_MS + STOP_TIMEOUT_S * 1000))
  while { pid_alive "$FA_PID" || pid_alive "$FB_PID"; } && ((NOW_MS < deadline)); do
    sleep "$POLL_INTERVAL"
    now_ms
  done
  for who in A B; do
    if [[ $who == A ]]; then pid=$FA_PID; else pid=$FB_PID; fi
    [[ -n $pid ]] || continue
    pid_alive "$pid" && continue # still running: left to teardown
    wait "$pid" 2>/dev/null || true
    if [[ $who == A ]]; then FA_PID=""; else FB_PID=""; fi
  done
}

# start_testnet5: start the command's private 5-node testnet in DEMO_DIR via
# `up 5` in a subprocess (it rolls itself back on failure; run in the
# background + wait so our traps fire promptly). Loads DEMO_ADDRS and keeps a
# copy in addrs.demo (`down` deletes addrs; the timeline needs the names).
start_testnet5() {
  step "starting a 5-node testnet in $DEMO_DIR"
  local up_status=0
  KADRTC_TESTNET_DIR=$DEMO_DIR KADRTC_BIN=$BIN bash "$SELF" up 5 &
  DEMO_UP_PID=$!
  wait "$DEMO_UP_PID" || up_status=$?
  DEMO_UP_PID=""
  ((up_status == 0)) || demo_fail "the 5-node testnet did not come up (up exited with status $up_status)"
  mapfile -t DEMO_ADDRS <"$DEMO_DIR/addrs"
  ((${#DEMO_ADDRS[@]} == 5)) || demo_fail "expected 5 node addresses in $DEMO_DIR/addrs, found ${#DEMO_ADDRS[@]}"
  cp -- "$DEMO_DIR/addrs" "$DEMO_DIR/addrs.demo"
}

# open_joiner_stdins: fresh fifos for the joiners' stdin and stdout, with the
# stdin fifos held open read-write by us: on Linux this never blocks, and our
# later writes cannot SIGPIPE us if a joiner dies. Closing them = EOF.
open_joiner_stdins() {
  mkfifo -- "$DEMO_DIR/A.stdin" "$DEMO_DIR/B.stdin" "$DEMO_DIR/A.pipe" "$DEMO_DIR/B.pipe"
  exec {A_FD}<>"$DEMO_DIR/A.stdin" {B_FD}<>"$DEMO_DIR/B.stdin"
}

# claim_dir NAME: use $STATE/NAME as DEMO_DIR; refuse if its testnet is up;
# remove only the files these commands create (never rm -r a user path).
claim_dir() {
  DEMO_DIR="$STATE/$1"
  mkdir -p -- "$DEMO_DIR"
  if STATE=$DEMO_DIR running_nodes && ((${#RUNNING[@]} > 0)); then
    die "another $1 is running (its testnet in $DEMO_DIR is up); wait for it, or stop that testnet with: KADRTC_TESTNET_DIR=$(printf %q "$DEMO_DIR") $PROG down"
  fi
  rm -f -- "$DEMO_DIR"/{A,B}.{out,log,stdin,pipe} "$DEMO_DIR/script.events" \
    "$DEMO_DIR/addrs.demo" "$DEMO_DIR"/node-*.out "$DEMO_DIR"/node-*.log \
    "$DEMO_DIR/pids" "$DEMO_DIR/addrs" "$DEMO_DIR/bootstrap.addr" \
    "$DEMO_DIR/results.json" "$DEMO_DIR/results.json.tmp"
}

ROOM=""
cmd_demo() {
  (($# <= 1)) || die "usage: $PROG demo [ROOM]"
  ROOM=${1:-demo-$(printf '%04x%04x' "$RANDOM" "$RANDOM")}
  [[ -n $ROOM ]] || die "demo: ROOM must not be empty"
  need python3 grep mkfifo tail

  # A private state dir, so the demo never touches a testnet started by `up`.
  DEMO_MODE=demo
  claim_dir demo

  trap demo_on_exit EXIT
  trap 'DEMO_FAIL_MSG="interrupted"; exit 130' INT
  trap 'DEMO_FAIL_MSG="terminated"; exit 143' TERM

  # 1. Build (unless KADRTC_BIN is given).
  build_bin

  # 2. A private 5-node testnet.
  start_testnet5

  # 3. Two joiners in the same room, bootstrapped from different nodes.
  step "room: $ROOM"
  step "starting joiner A (bootstrap: node 2) and joiner B (bootstrap: node 4)"
  open_joiner_stdins
  now_ms
  DEMO_T0=$NOW_MS
  : >"$DEMO_DIR/script.events"
  start_joiner A 2
  start_joiner B 4

  # 4. Wait until both have an open data channel.
  step "waiting for both joiners to report channel_open (up to ${DEMO_CHANNEL_TIMEOUT_S} s)…"
  DEMO_WAIT_DETAIL=channels_detail
  demo_wait "$DEMO_CHANNEL_TIMEOUT_S" "both joiners to report channel_open" both_channels_open
  IFS=$'\t' read -r A_PEER _ <<<"$(python3 -c "$PY_READY" "$DEMO_DIR/A.out" || true)"
  IFS=$'\t' read -r B_PEER _ <<<"$(python3 -c "$PY_READY" "$DEMO_DIR/B.out" || true)"
  note "A = ${A_PEER:-?}"
  note "B = ${B_PEER:-?}"

  # 5. One message each way, then wait for delivery.
  step "channels open; sending one message each way"
  printf 'hello from A\n' >&"$A_FD"
  mark 'wrote "hello from A" to A'"'"'s stdin'
  printf 'hello from B\n' >&"$B_FD"
  mark 'wrote "hello from B" to B'"'"'s stdin'
  step "waiting for both messages to arrive (up to ${DEMO_MESSAGE_TIMEOUT_S} s)…"
  DEMO_WAIT_DETAIL=messages_detail
  demo_wait "$DEMO_MESSAGE_TIMEOUT_S" "both messages to be delivered" both_messages_arrived

  # 6. Close both stdins: the joiners must leave the room and exit 0.
  step "messages delivered; closing both joiners' stdin"
  close_stdins
  mark "closed both joiners' stdin"
  finish_joiners

  # 7. Tear down, then report.
  demo_teardown
  print_timeline
  DEMO_OK=1
  note "demo: OK"
}

# --- measure -----------------------------------------------------------------------------------

MEASURE_RUNS=0
MEASURE_A=() # channel_open elapsed_ms of joiner A, one per completed run
MEASURE_B=() # same for joiner B

# joiner_elapsed WHO: the elapsed_ms of WHO's channel_open event -> ELAPSED.
ELAPSED=""
joiner_elapsed() {
  local rc=0
  ELAPSED=$(python3 -c "$PY_ELAPSED" "$DEMO_DIR/$1.out") || rc=$?
  case $rc in
  0) ;;
  2) demo_fail "joiner $1's channel_open event has no valid elapsed_ms" ;;
  *) demo_fail "could not read joiner $1's channel_open event from $DEMO_DIR/$1.out" ;;
  esac
}

cmd_measure() {
  (($# <= 1)) || die "usage: $PROG measure [RUNS]"
  local runs=${1:-$DEFAULT_MEASURE_RUNS} tag i a b
  if ! [[ $runs =~ ^[0-9]{1,3}$ ]] || ((10#$runs < 1 || 10#$runs > MAX_MEASURE_RUNS)); then
    die "measure: RUNS must be a whole number from 1 to $MAX_MEASURE_RUNS (got '$runs')"
  fi
  MEASURE_RUNS=$((10#$runs))
  need python3 grep mkfifo tail

  # A private state dir, so measure never touches a testnet of `up` or `demo`.
  DEMO_MODE=measure
  claim_dir measure

  trap demo_on_exit EXIT
  trap 'DEMO_FAIL_MSG="interrupted"; exit 130' INT
  trap 'DEMO_FAIL_MSG="terminated"; exit 143' TERM

  build_bin
  start_testnet5

  tag=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
  step "measuring $MEASURE_RUNS run(s): rooms measure-$tag-<i>, joiner A bootstrapped from node 2, B from node 4"
  for ((i = 1; i <= MEASURE_RUNS; i++)); do
    DEMO_FAIL_PREFIX="run $i/$MEASURE_RUNS: "
    ROOM="measure-$tag-$i"
    # Each run: fresh fifos and output files (the last run's stay for inspection).
    rm -f -- "$DEMO_DIR"/{A,B}.{out,log,stdin,pipe}
    : >"$DEMO_DIR/script.events"
    open_joiner_stdins
    now_ms
    DEMO_T0=$NOW_MS
    mark "run $i/$MEASURE_RUNS, room $ROOM"
    start_joiner A 2
    start_joiner B 4

    DEMO_WAIT_DETAIL=channels_detail
    demo_wait "$DEMO_CHANNEL_TIMEOUT_S" "both joiners to report channel_open" both_channels_open
    joiner_elapsed A
    a=$ELAPSED
    joiner_elapsed B
    b=$ELAPSED

    close_stdins
    mark "closed both joiners' stdin"
    finish_joiners
    rm -f -- "$DEMO_DIR"/{A,B}.{stdin,pipe}
    MEASURE_A+=("$a")
    MEASURE_B+=("$b")
    note "run $i/$MEASURE_RUNS: A $a ms, B $b ms"
  done
  DEMO_FAIL_PREFIX=""

  demo_teardown
  printf '\n'
  PYTHONIOENCODING=utf-8 python3 -c "$PY_MEASURE_SUMMARY" "$DEMO_DIR/results.json" "$BIN" \
    "$MEASURE_RUNS" "${MEASURE_A[*]}" "${MEASURE_B[*]}" ||
    demo_fail "could not compute the summary or write $DEMO_DIR/results.json"
  note "results written to $DEMO_DIR/results.json"
  DEMO_OK=1
  note "measure: OK"
}

# --- help / dispatch ---------------------------------------------------------------------------

usage() {
  cat <<EOF
usage: $PROG <command> [args]

commands:
  up [N]       start N kadrtc DHT nodes on 127.0.0.1 (default $DEFAULT_NODES, 1..$MAX_NODES);
               node 1 is the bootstrap node, its address goes to bootstrap.addr
  down         stop the nodes of the running testnet (SIGTERM, SIGKILL after ${STOP_TIMEOUT_S} s)
  status       list the testnet's nodes; exit 0 only if all of them are running
  demo [ROOM]  build kadrtc, start a private 5-node testnet, join ROOM
               (default demo-<random>) with two peers bootstrapped from
               nodes 2 and 4, exchange one message each way, print a timeline
  measure [RUNS]
               build kadrtc, start a private 5-node testnet, then RUNS times
               (default $DEFAULT_MEASURE_RUNS, 1..$MAX_MEASURE_RUNS) start two joiners (bootstrapped from
               nodes 2 and 4) in a fresh room and record both channel_open
               elapsed_ms; print count/median/p90/max/min per joiner and
               combined, and write them to <state dir>/measure/results.json
  help         show this help

state dir: $STATE
environment:
  KADRTC_TESTNET_DIR  state directory (default: testnet/.run)
  KADRTC_BIN          kadrtc binary to use (default: target/release/kadrtc;
                      demo and measure do not build when this is set)
  CARGO_TARGET_DIR    cargo target directory (default: target)
EOF
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  demo) cmd_demo "$@" ;;
  measure) cmd_measure "$@" ;;
  help | -h | --help) usage ;;
  "")
    usage >&2
    exit 2
    ;;
  *)
    printf '%s: unknown command: %s\n\n' "$PROG" "$cmd" >&2
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
