#!/usr/bin/env bash
# churn.sh — many rooms at once on a local kadrtc DHT, optionally with nodes killed while the
# joiners start (issue 7), on 127.0.0.1 only. Prints how many pairs connected and how long
# each joiner took from its start to its first open data channel.
#
#   testnet/churn.sh run [--nodes N] [--rooms R] [--kill K] [--runs M] [--timeout-s S]
#                        [--keep-a-bootstrap] [--json] [--stun] [--seed S] [--build]
#   testnet/churn.sh help
#
# See the "Churn" section of testnet/README.md.

set -euo pipefail

# --- constants -----------------------------------------------------------------

readonly LISTEN_ADDR=/ip4/127.0.0.1/tcp/0 # OS-assigned port, loopback only
readonly POLL_INTERVAL=0.05               # seconds between polls inside deadline loops
readonly NODE_READY_TIMEOUT_S=20          # per node, for its "ready" line
readonly COLLECTOR_READY_TIMEOUT_S=10     # the output collector has its fifos open
readonly STOP_TIMEOUT_S=5                 # SIGTERM grace period before SIGKILL (lib.sh)
readonly JOINER_EXIT_TIMEOUT_S=15         # joiners leave after their stdin is closed
readonly KILL_WINDOW_MS=2000              # nodes are killed within this time after T0
readonly PROGRESS_EVERY_MS=5000           # a progress line while pairs are missing
readonly DEAD_CHECK_EVERY_MS=1000         # how often to look for dead joiners
readonly LOG_TAIL_LINES=20
readonly MAX_TAILED_ROOMS=5 # failed rooms whose joiner logs are printed, per run
readonly DEFAULT_NODES=30 MAX_NODES=100
readonly DEFAULT_ROOMS=20 MAX_ROOMS=100
readonly DEFAULT_RUNS=1 MAX_RUNS=100
readonly DEFAULT_TIMEOUT_S=60 MAX_TIMEOUT_S=3600

# --- paths -----------------------------------------------------------------------

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
# shellcheck source=testnet/lib.sh
source "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(dirname -- "$SCRIPT_DIR")"
readonly REPO_ROOT
PROG="testnet/$(basename -- "${BASH_SOURCE[0]}")" # for messages
readonly PROG

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"

# --- embedded python (python3 is required; jq is not) ---------------------------------
#
# One program, three modes:
#   collect MANIFEST STATUS   read every joiner's stdout fifo (one thread each), write each line
#                             with its arrival time (epoch ms) to the joiner's .out file, and keep
#                             STATUS up to date: line 1 pairs connected, line 2 the room numbers
#                             still pending. Ends when every joiner has closed its stdout.
#   run RUN_DIR RUN NRUNS NODES_TSV
#                             judge one run from its files, print its report (and the log tails
#                             of failed rooms), write RUN_DIR/run.json; exit 1 if a pair failed.
#   total STATE_DIR JSON_MODE key=value...
#                             the table over all runs, STATE_DIR/summary.json, and with
#                             JSON_MODE=1 the summary as one JSON line on stdout (the table
#                             then goes to stderr).
#
# Files of a run (tab-separated):
#   manifest   joiner room_no role room fifo out log bootstrap_nodes(comma-separated)
#   starts     joiner start_epoch_ms pid
#   kills      node killed_epoch_ms pid
#   exits      joiner exit_status
#   t0         epoch ms just before the first joiner was started
#   nodes.tsv (state dir): node pid peer_id address ready_epoch_ms bootstrap_nodes
readonly PY='
import glob, json, math, os, re, sys, threading, time

def tsv(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [l.rstrip("\n").split("\t") for l in f if l.strip()]
    except OSError:
        return []

def manifest(path):
    return [dict(idx=int(r[0]), room_no=int(r[1]), role=r[2], room=r[3], fifo=r[4],
                 out=r[5], log=r[6], boots=[int(x) for x in r[7].split(",") if x])
            for r in tsv(path)]

def event(text):
    try:
        ev = json.loads(text)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None

def rooms_of(js):
    rooms = {}
    for j in js:
        rooms.setdefault(j["room_no"], []).append(j["idx"])
    return rooms

def first_open(opens, partner):
    # (epoch ms, elapsed_ms) of the first channel_open naming partner, or None
    if partner is None:
        return None
    for ts, peer, elapsed in opens:
        if peer == partner:
            return ts, elapsed
    return None

def pair_open(rooms, peer, opens, room_no):
    a, b = rooms[room_no]
    oa = first_open(opens[a], peer.get(b))
    ob = first_open(opens[b], peer.get(a))
    return oa, ob

def collect(manifest_path, status_path):
    js = manifest(manifest_path)
    rooms = rooms_of(js)
    lock = threading.Lock()
    peer, opens = {}, {j["idx"]: [] for j in js}

    def write_status():
        pending = [r for r in sorted(rooms)
                   if None in pair_open(rooms, peer, opens, r)]
        tmp = status_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("%d\n%s\n" % (len(rooms) - len(pending), " ".join(map(str, pending))))
        os.replace(tmp, status_path)

    def reader(j):
        try:
            src = open(j["fifo"], "rb")  # blocks until the joiner opens its end
        except OSError:
            return
        with src, open(j["out"], "a", encoding="utf-8") as out:
            for raw in src:
                ts = time.time_ns() // 1000000
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                out.write("%d %s\n" % (ts, text))
                out.flush()
                ev = event(text)
                name = ev.get("event") if ev else None
                if name not in ("ready", "channel_open"):
                    continue
                with lock:
                    if name == "ready":
                        peer[j["idx"]] = ev.get("peer_id")
                    else:
                        opens[j["idx"]].append((ts, ev.get("peer_id"), ev.get("elapsed_ms")))
                    write_status()

    threads = [threading.Thread(target=reader, args=(j,)) for j in js]
    for t in threads:
        t.start()
    with lock:
        write_status()  # the script waits for this file before it starts the joiners
    for t in threads:
        t.join()
    with lock:
        write_status()

def nearest_rank(sorted_vals, q):
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)] if sorted_vals else None

def stats(vals):
    s = sorted(v for v in vals if v is not None)
    return {"p50_ms": nearest_rank(s, 0.5), "p99_ms": nearest_rank(s, 0.99),
            "max_ms": s[-1] if s else None, "min_ms": s[0] if s else None}

LOG_RE = re.compile(r"\b(WARN|ERROR)\b")
TS_RE = re.compile(r"^\S+Z\s+")

def scan_logs(paths):
    # counts of WARN / ERROR / panic lines, and a few distinct messages as samples
    counts, samples = {"warn": 0, "error": 0, "panic": 0}, {}
    for path in paths:
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                kind = None
                if "panicked" in line:
                    kind = "panic"
                else:
                    m = LOG_RE.search(line)
                    if m:
                        kind = m.group(1).lower()
                if kind is None:
                    continue
                counts[kind] += 1
                msg = TS_RE.sub("", line.strip())
                msg = re.sub(r"12D3Koo\w+", "<peer>", msg)
                msg = re.sub(r"\d+", "N", msg)[:200]
                samples[msg] = samples.get(msg, 0) + 1
    top = sorted(samples.items(), key=lambda kv: -kv[1])[:8]
    counts["samples"] = [{"count": c, "line": m} for m, c in top]
    return counts

def tail(path, n):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [l.rstrip("\n") for l in f][-n:]
    except OSError:
        return None

def run_report(run_dir, run_no, nruns, nodes_tsv, tail_lines, max_tailed):
    js = manifest(os.path.join(run_dir, "manifest"))
    by_idx = {j["idx"]: j for j in js}
    rooms = rooms_of(js)
    t0 = int(open(os.path.join(run_dir, "t0")).read().strip())
    starts = {int(r[0]): int(r[1]) for r in tsv(os.path.join(run_dir, "starts"))}
    kills = {int(r[0]): int(r[1]) for r in tsv(os.path.join(run_dir, "kills"))}
    exits = {int(r[0]): int(r[1]) for r in tsv(os.path.join(run_dir, "exits"))}
    node_peer = {int(r[0]): r[2] for r in tsv(nodes_tsv)}
    peer, opens, lines, errors, foreign = {}, {}, {}, {}, 0
    for j in js:
        opens[j["idx"]], lines[j["idx"]] = [], []
        try:
            f = open(j["out"], encoding="utf-8", errors="replace")
        except OSError:
            continue
        with f:
            for raw in f:
                ts, _, text = raw.rstrip("\n").partition(" ")
                lines[j["idx"]].append((int(ts), text))
                ev = event(text)
                if not ev:
                    continue
                if ev.get("event") == "ready":
                    peer[j["idx"]] = ev.get("peer_id")
                elif ev.get("event") == "channel_open":
                    opens[j["idx"]].append((int(ts), ev.get("peer_id"), ev.get("elapsed_ms")))
                elif ev.get("event") == "error":
                    kind = str(ev.get("kind", "other"))
                    errors[kind] = errors.get(kind, 0) + 1
    join_to_open, self_ms, pair_ms, failed = {}, {}, [], []
    for r in sorted(rooms):
        a, b = rooms[r]
        oa, ob = pair_open(rooms, peer, opens, r)
        for idx, o, other in ((a, oa, b), (b, ob, a)):
            foreign += sum(1 for _, p, _ in opens[idx] if p != peer.get(other))
            if o is not None and idx in starts:
                join_to_open[idx] = o[0] - starts[idx]
                if isinstance(o[1], int):
                    self_ms[idx] = o[1]
        if oa is not None and ob is not None:
            pair_ms.append(max(oa[0], ob[0]) - t0)
        else:
            failed.append(r)
    cut_off = [j["idx"] for j in js if j["boots"] and all(k in kills for k in j["boots"])]
    st, self_st = stats(join_to_open.values()), stats(self_ms.values())
    all_open = max(pair_ms) if pair_ms and not failed else None
    logs = scan_logs([j["log"] for j in js])
    doc = {
        "run": run_no,
        "pairs_total": len(rooms),
        "pairs_connected": len(rooms) - len(failed),
        "joiners_total": len(js),
        "joiners_opened": len(join_to_open),
        **st,
        "self_p50_ms": self_st["p50_ms"],
        "self_p99_ms": self_st["p99_ms"],
        "all_connected_ms": all_open,
        "join_to_open_ms": [join_to_open.get(j["idx"]) for j in js],
        "nodes_killed": [{"node": k, "at_ms": v - t0} for k, v in sorted(kills.items(), key=lambda kv: kv[1])],
        "failed_rooms": [by_idx[rooms[r][0]]["room"] for r in failed],
        "error_events": errors,
        "joiners_all_bootstraps_killed": len(cut_off),
        "joiners_all_bootstraps_killed_opened": sum(1 for i in cut_off if i in join_to_open),
        "foreign_channel_opens": foreign,
        "joiner_exit_nonzero": sum(1 for v in exits.values() if v != 0),
        "joiner_logs": logs,
    }
    with open(os.path.join(run_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    def ms(v):
        return "-" if v is None else "%d ms" % v
    print("run %d/%d: %d/%d pairs connected%s; join-to-open p50 %s, p99 %s, max %s (joiners own elapsed_ms: p50 %s, p99 %s); %d node(s) killed"
          % (run_no, nruns, doc["pairs_connected"], doc["pairs_total"],
             (", all within %d ms of T0" % all_open) if all_open is not None else "",
             ms(st["p50_ms"]), ms(st["p99_ms"]), ms(st["max_ms"]),
             ms(self_st["p50_ms"]), ms(self_st["p99_ms"]), len(kills)))
    if cut_off:
        print("  %d joiner(s) had every bootstrap node killed (%d of them opened a channel anyway): %s"
              % (len(cut_off), doc["joiners_all_bootstraps_killed_opened"], " ".join(map(str, cut_off))))
    if errors:
        print("  error events from joiners: " + ", ".join("%s %d" % kv for kv in sorted(errors.items())))
    if foreign:
        print("  SUSPICIOUS: %d channel_open event(s) name a peer that is not the room partner" % foreign)
    if doc["joiner_exit_nonzero"]:
        print("  %d joiner(s) did not exit with status 0 after their stdin was closed" % doc["joiner_exit_nonzero"])
    if logs["panic"] or logs["error"] or logs["warn"]:
        print("  joiner stderr: %d WARN, %d ERROR, %d panic line(s)" % (logs["warn"], logs["error"], logs["panic"]))
    def short(p):
        return p if not isinstance(p, str) or len(p) < 20 else p[:8] + "…" + p[-6:]
    for n, r in enumerate(failed):
        a, b = rooms[r]
        print("  FAILED room %s (joiners %d and %d):" % (by_idx[a]["room"], a, b))
        for idx, other in ((a, b), (b, a)):
            j = by_idx[idx]
            o = first_open(opens[idx], peer.get(other))
            start = starts.get(idx)
            boots = []
            for k in j["boots"]:
                if k in kills:
                    rel = "killed at T0+%d ms" % (kills[k] - t0)
                    if start is not None:
                        rel += " (%+d ms from this joiner\u2019s start)" % (kills[k] - start)
                    boots.append("node %d %s" % (k, rel))
                else:
                    boots.append("node %d alive" % k)
            print("    joiner %d %s: peer %s, started T0+%s ms, %s; bootstrap: %s; exit status %s"
                  % (idx, j["role"], short(peer.get(idx, "(no ready line)")),
                     "?" if start is None else start - t0,
                     "channel_open to its partner after %d ms" % (o[0] - start) if o and start else "no channel_open to its partner",
                     ", ".join(boots), exits.get(idx, "?")))
        if n >= max_tailed:
            continue
        for idx in (a, b):
            j = by_idx[idx]
            print("    --- joiner %d stdout (ms since T0) ---" % idx)
            for ts, text in lines[idx][-tail_lines:] or [(t0, "(empty)")]:
                print("    +%6d  %s" % (ts - t0, text))
            print("    --- joiner %d stderr (%s), last %d lines ---" % (idx, j["log"], tail_lines))
            t = tail(j["log"], tail_lines)
            for l in (t if t else ["(empty or missing)"]):
                print("    " + l)
    if len(failed) > max_tailed + 1:
        print("  (logs of the other %d failed rooms: %s)" % (len(failed) - max_tailed - 1, run_dir))
    sys.exit(1 if failed else 0)

def total(state_dir, json_mode, kv):
    runs = []
    for path in sorted(glob.glob(os.path.join(state_dir, "run-*", "run.json")),
                       key=lambda p: int(p.split("run-")[-1].split("/")[0])):
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    allv = [v for r in runs for v in r["join_to_open_ms"] if v is not None]
    st = stats(allv)
    errors = {}
    for r in runs:
        for k, v in r["error_events"].items():
            errors[k] = errors.get(k, 0) + v
    node_logs = scan_logs(sorted(glob.glob(os.path.join(state_dir, "nodes", "node-*.log"))))
    doc = {
        "pairs_connected": sum(r["pairs_connected"] for r in runs),
        "pairs_total": sum(r["pairs_total"] for r in runs),
        "joiners_opened": sum(r["joiners_opened"] for r in runs),
        "joiners_total": sum(r["joiners_total"] for r in runs),
        **st,
        "nodes_killed": sum(len(r["nodes_killed"]) for r in runs),
        "joiners_all_bootstraps_killed": sum(r["joiners_all_bootstraps_killed"] for r in runs),
        "keep_a_bootstrap": kv["keep_a_bootstrap"] == "1",
        "wall_s": round(int(kv["wall_ms"]) / 1000, 1),
        "runs_completed": len(runs),
        "nodes": int(kv["nodes"]), "rooms": int(kv["rooms"]), "kill": int(kv["kill"]),
        "runs": int(kv["runs"]), "timeout_s": int(kv["timeout_s"]), "stun": kv["stun"] == "1",
        "seed": None if kv["seed"] == "" else int(kv["seed"]),
        "binary": kv["binary"], "build": kv["build"],
        "error_events": errors,
        "node_logs": node_logs,
        "logs": state_dir,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "per_run": [{k: v for k, v in r.items() if k != "join_to_open_ms"} for r in runs],
    }
    doc["all_connected"] = bool(runs) and doc["pairs_connected"] == doc["pairs_total"] and len(runs) == doc["runs"]
    with open(os.path.join(state_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    out = sys.stderr if json_mode else sys.stdout
    def c(v):
        return "-" if v is None else str(v)
    rows = [(str(r["run"]), "%d/%d" % (r["pairs_connected"], r["pairs_total"]),
             c(r["p50_ms"]), c(r["p99_ms"]), c(r["max_ms"]), c(r["all_connected_ms"]),
             str(len(r["nodes_killed"])), str(sum(r["error_events"].values())))
            for r in runs]
    rows.append(("all", "%d/%d" % (doc["pairs_connected"], doc["pairs_total"]),
                 c(st["p50_ms"]), c(st["p99_ms"]), c(st["max_ms"]), "",
                 str(doc["nodes_killed"]), str(sum(errors.values()))))
    head = ("run", "pairs", "p50 ms", "p99 ms", "max ms", "all open ms", "killed", "errors")
    print("\njoin-to-open: from a joiner\u2019s start to its first channel_open line with its partner (script clock);", file=out)
    print("p50/p99 nearest rank over every joiner that opened; \u201call open\u201d: T0 to the last pair\u2019s second channel_open", file=out)
    print("  %-4s %9s %8s %8s %8s %12s %7s %7s" % head, file=out)
    for row in rows:
        print("  %-4s %9s %8s %8s %8s %12s %7s %7s" % row, file=out)
    print("nodes %d, rooms %d per run, kill %d per run%s, runs %d, timeout %d s, STUN %s; %s build %s"
          % (doc["nodes"], doc["rooms"], doc["kill"],
             " (every joiner keeps a live bootstrap node)" if doc["keep_a_bootstrap"] else "",
             doc["runs"], doc["timeout_s"],
             "on" if doc["stun"] else "off", doc["build"], doc["binary"]), file=out)
    if node_logs["panic"] or node_logs["error"]:
        print("SUSPICIOUS: node stderr has %d ERROR and %d panic line(s)" % (node_logs["error"], node_logs["panic"]), file=out)
    print("wall time %.1f s; logs in %s" % (doc["wall_s"], state_dir), file=out)
    if json_mode:
        print(json.dumps(doc, separators=(",", ":")))

mode = sys.argv[1]
if mode == "collect":
    collect(sys.argv[2], sys.argv[3])
elif mode == "run":
    run_report(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
               int(sys.argv[6]), int(sys.argv[7]))
elif mode == "total":
    total(sys.argv[2], sys.argv[3] == "1", dict(a.split("=", 1) for a in sys.argv[4:]))
'

# --- options and state ---------------------------------------------------------------

NODES=$DEFAULT_NODES
ROOMS=$DEFAULT_ROOMS
KILL=0
RUNS=$DEFAULT_RUNS
TIMEOUT_S=$DEFAULT_TIMEOUT_S
JSON=0
STUN=0
KEEP_BOOT=0
SEED=""
BUILD=0

BIN=""
BUILD_KIND=""
STATE_DIR=""
DIE_MSG=""
FAIL_MSG=""
DONE=0
START_MS=0

# Nodes, by number (0 = the first node, never killed).
NODE_PID=()
NODE_ADDR=()
NODE_DEAD=() # 0 up, 1 killed in this run, 2 replaced or stopped
LIVE=()      # numbers of the nodes that are up

# The current run.
RUN_DIR=""
KEEP_FD="" # our end of the fifo every joiner reads its stdin from
COLLECTOR_PID=""
JOINER_PID=()
KILL_LIST=() # nodes to kill in this run
KILL_NODE=() # nodes still to kill in this run…
KILL_DUE=()  # …and when (epoch ms)
T0=0

# say TEXT: a line for people (stdout, or stderr with --json so stdout holds only the JSON).
say() {
  if ((JSON)); then printf '%s\n' "$*" >&2; else printf '%s\n' "$*"; fi
}

# human CMD...: run CMD with its stdout where `say` writes.
human() {
  if ((JSON)); then "$@" >&2; else "$@"; fi
}

fail() {
  FAIL_MSG=$1
  exit 1
}

usage() {
  cat <<EOF
usage: $PROG run [options]
       $PROG help

Start a kadrtc DHT of N nodes on 127.0.0.1, then R rooms at once: 2 joiners each, every
joiner bootstrapping from 2 random nodes. Optionally SIGKILL K random nodes (never node 0)
at random moments within ${KILL_WINDOW_MS} ms of the joiners' start. Reports pairs connected,
p50/p99/max of each joiner's start-to-channel_open time, the nodes killed and the wall time.

options of run:
  --nodes N       DHT nodes (default $DEFAULT_NODES, 1..$MAX_NODES)
  --rooms R       rooms per run, 2 joiners each (default $DEFAULT_ROOMS, 1..$MAX_ROOMS)
  --kill K        nodes killed per run (default 0, at most N-1), any but node 0, joiners'
                  bootstrap nodes included; with --runs > 1 the killed nodes are replaced
                  by fresh ones before the next run
  --keep-a-bootstrap
                  with --kill: never kill every bootstrap node of one joiner (a joiner
                  whose bootstrap nodes are all dead cannot get into the DHT at all)
  --runs M        runs on the same DHT, fresh rooms each (default $DEFAULT_RUNS, 1..$MAX_RUNS)
  --timeout-s S   a pair fails unless both joiners report channel_open within S seconds
                  of the joiners' start (default $DEFAULT_TIMEOUT_S)
  --json          print one JSON object on stdout at the end (the rest goes to stderr)
  --stun          nodes answer STUN (each on a free port) instead of --no-stun
  --seed S        seed bash's RANDOM: the same node, bootstrap and kill choices again
  --build         cargo build --release -p kadrtc-node --bin kadrtc first

Exit status: 0 when every pair of every run connected, 1 otherwise, 130/143 on SIGINT/SIGTERM.
Binary: \$KADRTC_BIN, else target/release/kadrtc, else target/debug/kadrtc.
Logs: \$KADRTC_CHURN_DIR (default target/churn)/<UTC time>-<pid>/, also linked as latest.
EOF
}

# int_opt NAME VALUE MIN MAX: VALUE is a whole number in MIN..MAX; stores it in INT.
INT=0
int_opt() {
  if ! [[ $2 =~ ^[0-9]{1,6}$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
    die "$1 must be a whole number from $3 to $4 (got '$2')"
  fi
  INT=$((10#$2))
}

parse_run_args() {
  local opt
  while (($# > 0)); do
    opt=$1
    case $opt in
      --json) JSON=1 ;;
      --stun) STUN=1 ;;
      --keep-a-bootstrap) KEEP_BOOT=1 ;;
      --build) BUILD=1 ;;
      --nodes | --rooms | --kill | --runs | --timeout-s | --seed)
        (($# >= 2)) || die "$opt needs a value"
        case $opt in
          --nodes) int_opt "$opt" "$2" 1 "$MAX_NODES"; NODES=$INT ;;
          --rooms) int_opt "$opt" "$2" 1 "$MAX_ROOMS"; ROOMS=$INT ;;
          --kill) int_opt "$opt" "$2" 0 "$((MAX_NODES - 1))"; KILL=$INT ;;
          --runs) int_opt "$opt" "$2" 1 "$MAX_RUNS"; RUNS=$INT ;;
          --timeout-s) int_opt "$opt" "$2" 1 "$MAX_TIMEOUT_S"; TIMEOUT_S=$INT ;;
          --seed) int_opt "$opt" "$2" 0 999999; SEED=$INT ;;
        esac
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) die "unknown option '$opt' (see: $PROG help)" ;;
    esac
    shift
  done
  ((KILL < NODES)) || die "--kill must be less than --nodes (node 0 is never killed): got --kill $KILL --nodes $NODES"
}

# --- binary ------------------------------------------------------------------------------

resolve_bin() {
  if ((BUILD)); then
    [[ -z ${KADRTC_BIN:-} ]] || die "--build and KADRTC_BIN exclude each other"
    command -v cargo >/dev/null 2>&1 || die "--build needs cargo"
    say "==> cargo build --release -p kadrtc-node --bin kadrtc"
    (cd -- "$REPO_ROOT" && human cargo build --release -p kadrtc-node --bin kadrtc) || die "cargo build failed"
    BIN="$TARGET_DIR/release/kadrtc"
  elif [[ -n ${KADRTC_BIN:-} ]]; then
    BIN=$KADRTC_BIN
    if [[ $BIN != */* ]]; then
      BIN=$(command -v -- "$BIN" || true)
      [[ -n $BIN ]] || die "KADRTC_BIN='$KADRTC_BIN' not found in PATH"
    fi
  elif [[ -x $TARGET_DIR/release/kadrtc ]]; then
    BIN="$TARGET_DIR/release/kadrtc"
  else
    BIN="$TARGET_DIR/debug/kadrtc"
  fi
  [[ -f $BIN && -x $BIN ]] || die "no kadrtc binary at '$BIN'
  build one with:  cargo build --release -p kadrtc-node --bin kadrtc  (or pass --build)
  or point KADRTC_BIN at an existing binary"
  case $BIN in
    */release/*) BUILD_KIND=release ;;
    */debug/*) BUILD_KIND=debug ;;
    *) BUILD_KIND=unknown ;;
  esac
}

# --- random choices ----------------------------------------------------------------------

# rand_below N: a random whole number in 0..N-1 (N ≤ 2^30), in RAND.
RAND=0
rand_below() {
  RAND=$(((RANDOM * 32768 + RANDOM) % $1))
}

# pick N FROM...: up to N distinct random elements of FROM, in PICKED.
PICKED=()
pick() {
  local n=$1 i tmp
  shift
  local pool=("$@")
  PICKED=()
  for ((i = 0; i < n && i < ${#pool[@]}; i++)); do
    rand_below $((${#pool[@]} - i))
    tmp=${pool[i]}
    pool[i]=${pool[i + RAND]}
    pool[i + RAND]=$tmp
    PICKED+=("${pool[i]}")
  done
}

refresh_live() {
  local k
  LIVE=()
  for k in "${!NODE_PID[@]}"; do
    ((NODE_DEAD[k])) || LIVE+=("$k")
  done
}

# --- nodes ---------------------------------------------------------------------------------

# start_node K BOOTSTRAP_NODE...: start node K (bootstrapping from the given nodes) and wait
# for its ready line. Records its pid and 127.0.0.1 address.
start_node() {
  local k=$1 b line peer addr deadline boots=""
  shift
  local dir="$STATE_DIR/nodes"
  local args=(node --ephemeral --listen "$LISTEN_ADDR" --no-mdns --json)
  if ((STUN)); then args+=(--stun-port 0); else args+=(--no-stun); fi
  for b in "$@"; do
    args+=(--bootstrap "${NODE_ADDR[b]}")
    boots+=${boots:+,}$b
  done
  "$BIN" "${args[@]}" </dev/null >"$dir/node-$k.out" 2>"$dir/node-$k.log" &
  NODE_PID[k]=$!
  disown "$!" # no "Killed" job notices from bash; its exit status is not needed
  NODE_DEAD[k]=0
  now_ms
  deadline=$((NOW_MS + NODE_READY_TIMEOUT_S * 1000))
  while :; do
    line=""
    if IFS= read -r line 2>/dev/null <"$dir/node-$k.out" && [[ $line == *'"event":"ready"'* ]]; then
      [[ $line =~ \"peer_id\":\"([^\"]+)\" ]] || fail "node $k: ready line without peer_id: $line"
      peer=${BASH_REMATCH[1]}
      [[ $line =~ \"listen\":\[\"([^\"]+)\" ]] || fail "node $k: ready line without a listen address: $line"
      addr=${BASH_REMATCH[1]}
      [[ $addr == /ip4/127.0.0.1/tcp/* ]] || fail "node $k listens on $addr, not on 127.0.0.1"
      [[ $addr == */p2p/* ]] || addr+="/p2p/$peer"
      NODE_ADDR[k]=$addr
      now_ms
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "${NODE_PID[k]}" "$peer" "$addr" "$NOW_MS" "$boots" >>"$STATE_DIR/nodes.tsv"
      return 0
    fi
    if ! pid_alive "${NODE_PID[k]}"; then
      tail_file "node $k stderr" "$dir/node-$k.log" >&2
      fail "node $k exited before printing its ready line"
    fi
    now_ms
    if ((NOW_MS >= deadline)); then
      tail_file "node $k stderr" "$dir/node-$k.log" >&2
      fail "node $k printed no ready line within $NODE_READY_TIMEOUT_S s"
    fi
    sleep "$POLL_INTERVAL"
  done
}

# start_node_from_live K: start node K bootstrapping from 1 or 2 random live nodes.
start_node_from_live() {
  refresh_live
  rand_below 2
  pick $((RAND + 1)) "${LIVE[@]}"
  start_node "$1" "${PICKED[@]}"
}

start_network() {
  local k t
  mkdir -p -- "$STATE_DIR/nodes"
  : >"$STATE_DIR/nodes.tsv"
  now_ms
  t=$NOW_MS
  start_node 0
  for ((k = 1; k < NODES; k++)); do
    start_node_from_live "$k"
  done
  now_ms
  say "$NODES node(s) ready in $((NOW_MS - t)) ms (node 0 alone, each other from 1–2 random earlier nodes)"
}

# replace_killed: before the next run, a fresh node for each one killed, so every run starts
# with N nodes.
replace_killed() {
  local k n=0 next=${#NODE_PID[@]}
  for k in "${!NODE_PID[@]}"; do
    ((NODE_DEAD[k] == 1)) || continue
    NODE_DEAD[k]=2 # replaced
    start_node_from_live "$next"
    next=$((next + 1))
    n=$((n + 1))
  done
  ((n == 0)) || say "replaced $n killed node(s) with fresh ones"
}

# --- one run -------------------------------------------------------------------------------

# choose_kills RUN BOOTS...: KILL random live nodes other than node 0 -> KILL_LIST. BOOTS are
# the joiners' bootstrap nodes (space-separated per joiner); with --keep-a-bootstrap a node is
# skipped when killing it would leave a joiner with no live bootstrap node.
choose_kills() {
  local run=$1 k b i lost
  shift
  local boots=("$@") candidates=() killed=()
  KILL_LIST=()
  ((KILL > 0)) || return 0
  for k in "${LIVE[@]}"; do ((k == 0)) || candidates+=("$k"); done
  ((${#candidates[@]} >= KILL)) || fail "run $run: only ${#candidates[@]} node(s) besides node 0 are up, cannot kill $KILL"
  pick "${#candidates[@]}" "${candidates[@]}" # a random order
  for k in "${PICKED[@]}"; do
    ((${#KILL_LIST[@]} < KILL)) || break
    if ((KEEP_BOOT)); then
      killed[k]=1
      for i in "${!boots[@]}"; do
        lost=1
        for b in ${boots[i]}; do ((${killed[b]:-0})) || lost=0; done
        ((lost == 0)) || break
      done
      if ((lost)); then
        unset 'killed[k]'
        continue
      fi
    fi
    KILL_LIST+=("$k")
  done
  ((${#KILL_LIST[@]} == KILL)) || fail "run $run: cannot kill $KILL nodes and leave every joiner a live bootstrap node (at most ${#KILL_LIST[@]} this run); use fewer --kill or more --nodes"
}

# kill_due: SIGKILL the scheduled nodes whose time has come.
kill_due() {
  local i k
  ((${#KILL_NODE[@]} > 0)) || return 0
  now_ms
  for i in "${!KILL_NODE[@]}"; do
    ((NOW_MS >= KILL_DUE[i])) || continue
    k=${KILL_NODE[i]}
    if pid_alive "${NODE_PID[k]}"; then
      kill -KILL "${NODE_PID[k]}" 2>/dev/null || true
      now_ms
      printf '%s\t%s\t%s\n' "$k" "$NOW_MS" "${NODE_PID[k]}" >>"$RUN_DIR/kills"
    fi
    NODE_DEAD[k]=1
    unset 'KILL_NODE[i]' 'KILL_DUE[i]'
  done
}

# read_status: the collector's status file -> CONNECTED, PENDING (room numbers).
CONNECTED=0
PENDING=()
read_status() {
  local line1="" line2=""
  { IFS= read -r line1 && IFS= read -r line2; } 2>/dev/null <"$RUN_DIR/status" || return 0
  CONNECTED=${line1:-0}
  read -r -a PENDING <<<"$line2"
}

# pending_all_dead: every pending room has a joiner that has exited.
pending_all_dead() {
  local r
  ((${#PENDING[@]} > 0)) || return 1
  for r in "${PENDING[@]}"; do
    if pid_alive "${JOINER_PID[2 * r]}" && pid_alive "${JOINER_PID[2 * r + 1]}"; then return 1; fi
  done
  return 0
}

# stop_joiners: close their stdin, give them JOINER_EXIT_TIMEOUT_S to leave, then stop the
# rest; record exit statuses; wait for the collector to write the last lines.
stop_joiners() {
  local i st
  if [[ -n $KEEP_FD ]]; then
    exec {KEEP_FD}>&-
    KEEP_FD=""
  fi
  if ((${#JOINER_PID[@]} > 0)); then
    if ! wait_gone "$JOINER_EXIT_TIMEOUT_S" "${JOINER_PID[@]}"; then
      say "note: ${#LEFT[@]} joiner(s) still running $JOINER_EXIT_TIMEOUT_S s after their stdin was closed; stopping them"
      kill_all "${LEFT[@]}"
    fi
    for i in "${!JOINER_PID[@]}"; do
      st=0
      wait "${JOINER_PID[i]}" 2>/dev/null || st=$?
      printf '%s\t%s\n' "$i" "$st" >>"$RUN_DIR/exits"
    done
  fi
  JOINER_PID=()
  if [[ -n $COLLECTOR_PID ]]; then
    wait_gone 5 "$COLLECTOR_PID" || kill_all "$COLLECTOR_PID"
    wait "$COLLECTOR_PID" 2>/dev/null || true
    COLLECTOR_PID=""
  fi
  rm -f -- "$RUN_DIR"/*.fifo
}

# run_once RUN: one run; counts it in RUNS_FAILED if a pair did not connect.
RUNS_FAILED=0
run_once() {
  local run=$1 tag r i k role room deadline next_dead next_progress rc
  RUN_DIR="$STATE_DIR/run-$run"
  mkdir -p -- "$RUN_DIR"
  : >"$RUN_DIR/starts"
  : >"$RUN_DIR/kills"
  : >"$RUN_DIR/exits"
  tag=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
  refresh_live

  # Rooms, joiners and their bootstrap nodes (from the nodes up now, before any kill).
  local boots=() room_of=() bs=()
  : >"$RUN_DIR/manifest"
  for ((r = 0; r < ROOMS; r++)); do
    room="churn-$tag-$run-$r"
    for role in a b; do
      i=$((2 * r))
      [[ $role == a ]] || i=$((i + 1))
      pick 2 "${LIVE[@]}"
      boots[i]="${PICKED[*]}"
      room_of[i]=$room
      mkfifo -- "$RUN_DIR/j$i.fifo"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$r" "$role" "$room" "$RUN_DIR/j$i.fifo" \
        "$RUN_DIR/j$i.out" "$RUN_DIR/j$i.log" "${boots[i]// /,}" >>"$RUN_DIR/manifest"
    done
  done
  mkfifo -- "$RUN_DIR/stdin.fifo"

  # Kill schedule: K random live nodes other than node 0, each at a random moment of the
  # first KILL_WINDOW_MS after T0.
  KILL_DUE=()
  choose_kills "$run" "${boots[@]}"
  KILL_NODE=("${KILL_LIST[@]}")

  # The collector opens every fifo for reading; the joiners' stdout opens then never block.
  rm -f -- "$RUN_DIR/status"
  python3 -c "$PY" collect "$RUN_DIR/manifest" "$RUN_DIR/status" </dev/null &
  COLLECTOR_PID=$!
  now_ms
  deadline=$((NOW_MS + COLLECTOR_READY_TIMEOUT_S * 1000))
  until [[ -e $RUN_DIR/status ]]; do
    pid_alive "$COLLECTOR_PID" || fail "run $run: the output collector (python3) exited"
    now_ms
    ((NOW_MS < deadline)) || fail "run $run: the output collector did not start within $COLLECTOR_READY_TIMEOUT_S s"
    sleep "$POLL_INTERVAL"
  done

  # Every joiner reads stdin from one fifo; we hold it open until the run ends.
  exec {KEEP_FD}<>"$RUN_DIR/stdin.fifo"
  now_ms
  T0=$NOW_MS
  printf '%s\n' "$T0" >"$RUN_DIR/t0"
  for k in "${!KILL_NODE[@]}"; do
    rand_below "$KILL_WINDOW_MS"
    KILL_DUE[k]=$((T0 + RAND))
  done
  JOINER_PID=()
  for ((i = 0; i < 2 * ROOMS; i++)); do
    local jargs=(join "${room_of[i]}" --json --no-mdns --listen "$LISTEN_ADDR")
    read -r -a bs <<<"${boots[i]}"
    for k in "${bs[@]}"; do jargs+=(--bootstrap "${NODE_ADDR[k]}"); done
    now_ms
    "$BIN" "${jargs[@]}" <"$RUN_DIR/stdin.fifo" >"$RUN_DIR/j$i.fifo" 2>"$RUN_DIR/j$i.log" {KEEP_FD}>&- &
    JOINER_PID[i]=$!
    printf '%s\t%s\t%s\n' "$i" "$NOW_MS" "$!" >>"$RUN_DIR/starts"
    kill_due
  done
  now_ms
  say "run $run/$RUNS: started $((2 * ROOMS)) joiners in $ROOMS rooms in $((NOW_MS - T0)) ms${KILL_LIST[*]:+; killing nodes ${KILL_LIST[*]} within $KILL_WINDOW_MS ms}"

  # Wait until every pair is connected and every kill is done, the deadline passes, or every
  # pair still missing has lost a joiner.
  deadline=$((T0 + TIMEOUT_S * 1000))
  next_dead=$((T0 + DEAD_CHECK_EVERY_MS))
  next_progress=$((T0 + PROGRESS_EVERY_MS))
  while :; do
    kill_due
    read_status
    ((CONNECTED < ROOMS || ${#KILL_NODE[@]} > 0)) || break
    now_ms
    if ((NOW_MS >= deadline)); then
      say "run $run/$RUNS: timed out after $TIMEOUT_S s with $CONNECTED/$ROOMS pairs connected"
      break
    fi
    if ((NOW_MS >= next_dead)); then
      next_dead=$((NOW_MS + DEAD_CHECK_EVERY_MS))
      # The collector ends only when every joiner has closed its stdout.
      if ! pid_alive "$COLLECTOR_PID" && ! wait_gone 0 "${JOINER_PID[@]}"; then
        fail "run $run: the output collector (python3) exited while ${#LEFT[@]} joiner(s) still run"
      fi
      if ((${#KILL_NODE[@]} == 0)) && pending_all_dead; then
        say "run $run/$RUNS: every pair still missing lost a joiner; not waiting any longer"
        break
      fi
    fi
    if ((NOW_MS >= next_progress)); then
      next_progress=$((NOW_MS + PROGRESS_EVERY_MS))
      say "  T0+$(((NOW_MS - T0) / 1000)) s: $CONNECTED/$ROOMS pairs connected"
    fi
    sleep "$POLL_INTERVAL"
  done

  stop_joiners
  rc=0
  human python3 -c "$PY" run "$RUN_DIR" "$run" "$RUNS" "$STATE_DIR/nodes.tsv" "$LOG_TAIL_LINES" "$MAX_TAILED_ROOMS" || rc=$?
  ((rc <= 1)) || fail "run $run: the report failed (python3 exit status $rc)"
  ((rc == 0)) || RUNS_FAILED=$((RUNS_FAILED + 1))
}

# --- teardown ------------------------------------------------------------------------------

teardown() {
  local k pids=()
  if [[ -n $KEEP_FD ]]; then
    exec {KEEP_FD}>&-
    KEEP_FD=""
  fi
  pids=("${JOINER_PID[@]}")
  [[ -z $COLLECTOR_PID ]] || pids+=("$COLLECTOR_PID")
  ((${#pids[@]} == 0)) || kill_all "${pids[@]}"
  JOINER_PID=()
  COLLECTOR_PID=""
  pids=()
  for k in "${!NODE_PID[@]}"; do
    ((NODE_DEAD[k])) || pids+=("${NODE_PID[k]}")
  done
  ((${#pids[@]} == 0)) || kill_all "${pids[@]}"
  for k in "${!NODE_PID[@]}"; do NODE_DEAD[k]=2; done
  if [[ -n $RUN_DIR ]]; then rm -f -- "$RUN_DIR"/*.fifo; fi
}

on_exit() {
  local rc=$?
  set +e
  teardown
  ((DONE)) && exit "$rc"
  ((rc != 0)) || rc=1
  printf '%s: FAILED: %s\n' "$PROG" "${FAIL_MSG:-${DIE_MSG:-unexpected error (exit status $rc)}}" >&2
  [[ -z $STATE_DIR ]] || printf '%s: logs in %s\n' "$PROG" "$STATE_DIR" >&2
  exit "$rc"
}

# --- run -----------------------------------------------------------------------------------

cmd_run() {
  local run stamp root
  parse_run_args "$@"
  command -v python3 >/dev/null 2>&1 || die "python3 is required"
  command -v mkfifo >/dev/null 2>&1 || die "mkfifo is required"
  [[ -r /proc/self/stat ]] || die "Linux /proc is required"
  [[ -z $SEED ]] || RANDOM=$SEED
  now_ms
  START_MS=$NOW_MS
  resolve_bin

  root="${KADRTC_CHURN_DIR:-$TARGET_DIR/churn}"
  [[ $root == /* ]] || root="$PWD/$root"
  stamp="$(date -u +%Y%m%dT%H%M%SZ)-$$"
  STATE_DIR="$root/$stamp"
  mkdir -p -- "$STATE_DIR"
  ln -sfn -- "$stamp" "$root/latest"

  trap on_exit EXIT
  trap 'FAIL_MSG="interrupted"; exit 130' INT
  trap 'FAIL_MSG="terminated"; exit 143' TERM

  say "==> churn: $NODES node(s), $ROOMS room(s) × 2 joiners, kill $KILL per run, $RUNS run(s), timeout $TIMEOUT_S s"
  say "    binary: $BIN ($BUILD_KIND); logs: $STATE_DIR"
  start_network
  for ((run = 1; run <= RUNS; run++)); do
    ((run == 1)) || replace_killed
    run_once "$run"
  done
  RUN_DIR=""
  teardown
  now_ms
  python3 -c "$PY" total "$STATE_DIR" "$JSON" "wall_ms=$((NOW_MS - START_MS))" \
    "nodes=$NODES" "rooms=$ROOMS" "kill=$KILL" "runs=$RUNS" "timeout_s=$TIMEOUT_S" \
    "stun=$STUN" "keep_a_bootstrap=$KEEP_BOOT" "seed=$SEED" "binary=$BIN" "build=$BUILD_KIND" ||
    fail "the summary failed"
  if ((RUNS_FAILED > 0)); then
    FAIL_MSG="$RUNS_FAILED of $RUNS run(s) had a pair that did not connect"
    exit 1
  fi
  DONE=1
  say "churn: OK"
}

main() {
  case ${1:-} in
    run)
      shift
      cmd_run "$@"
      ;;
    help | -h | --help) usage ;;
    "")
      usage >&2
      exit 2
      ;;
    *)
      printf '%s: unknown command %q\n' "$PROG" "$1" >&2
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
