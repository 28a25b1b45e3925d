#!/usr/bin/env bash
# scale.sh — issue 7's figures: kadrtc under load, churn and long runs, on this machine.
#
#   testnet/scale.sh all [--small] [--debug] [--no-nat]
#   testnet/scale.sh SCENARIO [--small] [--debug]
#
# Scenarios, in the order `all` runs them:
#   procs      30 `kadrtc node` processes, 20 rooms × 2 `kadrtc join` started at once
#              (testnet/churn.sh): every pair connects; join-to-open p50 / p99
#   kill       the same, with 10 random nodes SIGKILLed while the joiners start (each joiner
#              keeps one live bootstrap node: one that knows no live node cannot join)
#   network    200 nodes in one process, 100 rooms of two of them joined 2 a second
#              (kadrtc-scale, on libp2p's memory transport): every pair connects; record gets
#              and requests per get against log2 N; memory per node; messages per node per
#              minute, from 2 minutes after the last pair connected
#   cut        a pair's open channel loses its path for 10 s (router A's link cut in the NAT
#              lab, testnet/nat.sh scenario cut-cone, as root): peer_left, then open again
#   soak       10 minutes of pairs joining fresh rooms and leaving: RSS and open files
#              bounded, and back once every pair left
#   idle       a pair left alone 5 minutes after connecting: messages per minute
#
# --small: the reduced version CI runs (10 nodes and 4 rooms, 3 killed, 20 + 10 in one
# process, 1-minute soak and idle, one cut). --debug: debug binaries (default release,
# built first). --no-nat: skip the NAT lab (it needs root and network namespaces).
# Prints each scenario's own report, then one table; exit 1 when a scenario failed.

set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
REPO_ROOT="$(dirname -- "$SCRIPT_DIR")"
readonly REPO_ROOT
readonly SCENARIOS=(procs kill network cut soak idle)

usage() {
  sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  printf 'testnet/scale.sh: %s\n' "$*" >&2
  exit 2
}

SMALL=0
PROFILE=release
NAT=1
WHAT=""
while (($#)); do
  case $1 in
    --small) SMALL=1 ;;
    --debug) PROFILE=debug ;;
    --no-nat) NAT=0 ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    all | procs | kill | network | cut | soak | idle)
      [[ -z $WHAT ]] || die "one scenario (or all) at a time; got $WHAT and $1"
      WHAT=$1
      ;;
    *) die "unknown argument '$1' (see testnet/scale.sh --help)" ;;
  esac
  shift
done
[[ -n $WHAT ]] || {
  usage >&2
  exit 2
}

# The cut needs root; say so before the other scenarios' minutes, not after them.
if ((NAT)) && [[ $WHAT == all || $WHAT == cut ]] && ((EUID != 0)); then
  die "the cut scenario needs root (network namespaces): run as root, or add --no-nat to skip it"
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
OUT="$TARGET_DIR/scale/$(date -u +%Y%m%dT%H%M%SZ)-$$"
mkdir -p -- "$OUT"

cd -- "$REPO_ROOT"
if [[ $PROFILE == release ]]; then
  printf '==> cargo build --release (kadrtc, kadrtc-scale)\n' >&2
  cargo build --release --locked -q -p kadrtc-node -p kadrtc-bench
else
  printf '==> cargo build (kadrtc, kadrtc-scale)\n' >&2
  cargo build --locked -q -p kadrtc-node -p kadrtc-bench
fi
export KADRTC_BIN="$TARGET_DIR/$PROFILE/kadrtc"
SCALE_BIN="$TARGET_DIR/$PROFILE/kadrtc-scale"
[[ -x $KADRTC_BIN && -x $SCALE_BIN ]] || die "the build left no $KADRTC_BIN or $SCALE_BIN"

# The counts of each scenario, full and --small.
if ((SMALL)); then
  PROCS_ARGS=(--nodes 10 --rooms 4)
  KILL_ARGS=(--nodes 10 --rooms 4 --kill 3 --keep-a-bootstrap)
  NETWORK_ARGS=(--nodes 20 --rooms 5 --observe-s 10 --settle-s 0)
  SOAK_ARGS=(--minutes 1 --pairs 2)
  IDLE_ARGS=(--minutes 1)
  CUT_RUNS=1
else
  PROCS_ARGS=(--nodes 30 --rooms 20)
  KILL_ARGS=(--nodes 30 --rooms 20 --kill 10 --keep-a-bootstrap)
  NETWORK_ARGS=(--nodes 200 --rooms 100 --observe-s 60 --join-rate 2)
  SOAK_ARGS=(--minutes 10 --pairs 4)
  IDLE_ARGS=(--minutes 5)
  CUT_RUNS=3
fi

FAILED=()

# run NAME CMD...: runs one scenario, its report on stdout and its JSON in $OUT/NAME.json.
run() {
  local name=$1
  shift
  printf '\n==> %s\n' "$name"
  if "$@" >"$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2); then
    return 0
  fi
  FAILED+=("$name")
  return 0
}

scenario() {
  case $1 in
    procs) run procs bash "$SCRIPT_DIR/churn.sh" run --json "${PROCS_ARGS[@]}" ;;
    kill) run kill bash "$SCRIPT_DIR/churn.sh" run --json "${KILL_ARGS[@]}" ;;
    network) run network "$SCALE_BIN" --json network "${NETWORK_ARGS[@]}" ;;
    soak) run soak "$SCALE_BIN" --json soak "${SOAK_ARGS[@]}" ;;
    idle) run idle "$SCALE_BIN" --json idle "${IDLE_ARGS[@]}" ;;
    cut)
      if ((!NAT)); then
        printf '\n==> cut: skipped (--no-nat)\n'
        return 0
      fi
      printf '\n==> cut\n'
      if KADRTC_NAT_DIR="$OUT/nat" bash "$SCRIPT_DIR/nat.sh" scenario cut-cone --runs "$CUT_RUNS"; then
        cp -- "$OUT/nat/results.json" "$OUT/cut.json"
      else
        [[ -f $OUT/nat/results.json ]] && cp -- "$OUT/nat/results.json" "$OUT/cut.json"
        FAILED+=(cut)
      fi
      ;;
  esac
}

if [[ $WHAT == all ]]; then
  for name in "${SCENARIOS[@]}"; do scenario "$name"; done
else
  scenario "$WHAT"
fi

# The table, from each scenario's JSON (a missing or failed one says so).
printf '\n'
python3 - "$OUT" "$PROFILE" "$SMALL" "$NAT" <<'PY'
import json, os, sys
out, profile, small, nat = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"

def load(name):
    try:
        with open(os.path.join(out, name + ".json"), encoding="utf-8") as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError, IndexError):
        return None

rows = []
def churn(name, label):
    d = load(name)
    if d is None:
        return rows.append((label, "did not run (see %s.log)" % name))
    killed = ", %d nodes killed" % d["nodes_killed"] if d.get("nodes_killed") else ""
    rows.append((label, "%d/%d pairs connected%s; join-to-open p50 %s ms, p99 %s ms, max %s ms"
                 % (d["pairs_connected"], d["pairs_total"], killed, d["p50_ms"], d["p99_ms"], d["max_ms"])))

d = load("procs")
churn("procs", "%s-node process testnet, %s rooms × 2 joiners at once"
      % ((d or {}).get("nodes", "?"), (d or {}).get("rooms", "?")))
d = load("kill")
churn("kill", "same, %s random nodes killed while the joiners start" % (d or {}).get("kill", "?"))

d = load("network")
if d is None:
    rows.append(("in-process network", "did not run (see network.log)"))
else:
    rows.append(("%d-node in-process network, %d rooms" % (d["nodes"], d["rooms"]),
                 "%d/%d pairs connected; join-to-open p50 %.0f ms, p99 %.0f ms; record get p50 %.1f ms, "
                 "%.1f requests/get (log2 N = %.1f); %.0f KiB/node; %.1f messages/node/min connected"
                 % (d["pairs_connected"], d["rooms"], d["join_to_open_p50_ms"], d["join_to_open_p99_ms"],
                    d["get_p50_ms"], d["requests_per_get_mean"], d["log2_nodes"], d["rss_per_node_kib"],
                    d["connected_messages_per_node_per_minute"])))

d = load("cut")
if d is None:
    rows.append(("open channel's path cut 10 s, restored", "did not run" if nat else "skipped (--no-nat)"))
else:
    for s in d.get("scenarios", []):
        lefts = [r[w].get("left_after_cut_ms") for r in s["runs"] for w in "AB"]
        lefts = [v for v in lefts if v is not None]
        rows.append(("open channel's path cut 10 s, restored",
                     "%d/%d runs: peer_left %s ms after the cut; open again %s ms after the restore (median)"
                     % (s["passed"], s["total"], "/".join(str(v) for v in lefts) or "-", s["median_ms"])))

d = load("soak")
if d is None:
    rows.append(("soak", "did not run (see soak.log)"))
else:
    rows.append(("%.0f-minute soak, %d pairs joining and leaving" % (d["minutes"], d["pairs"]),
                 "%d rounds (%d failed); RSS %.1f → max %.1f → end %.1f MiB (growth after the first minute: %s); "
                 "open files %d → max %d → end %d; tasks %d → %d"
                 % (d["rounds"], d["failed_rounds"], d["rss_start_mib"], d["rss_max_mib"], d["rss_end_mib"],
                    "n/a, run too short" if d["rss_growth_mib"] is None else "%.1f MiB" % d["rss_growth_mib"],
                    d["files_start"], d["files_max"], d["files_end"],
                    d["tasks_start"], d["tasks_end"])))

d = load("idle")
if d is None:
    rows.append(("idle pair", "did not run (see idle.log)"))
else:
    m = d["member_per_minute"]
    rows.append(("idle pair, %.0f min after connecting" % d["minutes"],
                 "DHT+gossipsub messages/min: members %s; other nodes %.1f (pings apart: %.1f/min)"
                 % (" and ".join("%.1f" % x["dht_and_gossipsub"] for x in m),
                    d["node_per_minute"]["dht_and_gossipsub"], m[0]["pings"])))

width = max(len(r[0]) for r in rows)
print("kadrtc at scale (%s build%s)" % (profile, ", --small" if small else ""))
for label, figure in rows:
    print("  %-*s  %s" % (width, label, figure))
print("reports and logs: %s" % out)
PY

if ((${#FAILED[@]})); then
  printf 'FAILED: %s\n' "${FAILED[*]}" >&2
  exit 1
fi
