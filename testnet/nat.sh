#!/usr/bin/env bash
# nat.sh — a NAT lab for kadrtc: an emulated internet in network namespaces on
# this machine (one public kadrtc node, two home routers that NAT, one peer
# behind each), and scenarios that join two peers over it and print a table.
#
#   testnet/nat.sh scenarios [--runs N]      run every scenario N times (default 5)
#   testnet/nat.sh scenario NAME [--runs N]  run one scenario
#   testnet/nat.sh selftest                  check the lab itself: routing, NAT
#                                            mappings, filtering, loss and delay
#   testnet/nat.sh up [MODE] [options]       build a lab and leave it running
#   testnet/nat.sh status | shell WHO | exec WHO CMD... | down | clean
#
# Needs root, iproute2, nftables, python3 (and iptables + kadrtc-netdelay for
# the delay). See testnet/README.md ("NAT lab") for the topology, addresses,
# scenarios and state directory.

set -euo pipefail

# --- constants -----------------------------------------------------------------

# Every lab address is inside 10.77.0.0/16; the lab refuses to run if the host
# uses any of it. The lab namespaces have no link to the host's namespace.
readonly LAB_NET=10.77.0.0/16
readonly INET_NODE_IP=10.77.1.1 NODE_IP=10.77.1.2     # internet <-> public node
readonly INET_RA_IP=10.77.2.1 RA_WAN_IP=10.77.2.2     # internet <-> router A (WAN)
readonly INET_RB_IP=10.77.3.1 RB_WAN_IP=10.77.3.2     # internet <-> router B (WAN)
readonly INET_PUB_IP=10.77.4.1 PUB_A_IP=10.77.4.2     # internet <-> peer A (--public-a)
readonly RA_LAN_IP=10.77.11.1 A_LAN_IP=10.77.11.2     # router A (LAN) <-> peer A
readonly RB_LAN_IP=10.77.12.1 B_LAN_IP=10.77.12.2     # router B (LAN) <-> peer B
readonly NODE_TCP_PORT=4001
readonly NODE_STUN_PORT=3478
readonly QUEUE_RA=1 QUEUE_RB=2 # NFQUEUE numbers of the two routers' delay
readonly NFT_TABLE=kadrtc_nat  # the routers' nftables table (ip family)

# Namespaces are named kn<4 hex digits>-<role>; `down` removes exactly these.
readonly NS_PATTERN='^kn[0-9a-f]{4}-(inet|node|rA|rB|A|B)$'

readonly POLL_INTERVAL=0.05      # seconds between polls inside deadline loops
readonly READY_TIMEOUT_S=20      # node / netdelay "ready" line
readonly OPEN_DEADLINE_S=60      # per run: both joiners report channel_open
readonly NOPATH_DEADLINE_S=30    # per run: a no_path error (symmetric-norelay)
readonly CUT_S=10                 # cut-cone: how long router A's internet link is down
readonly RECONNECT_DEADLINE_S=60  # cut-cone: from the restored link to both channels open again
readonly EXIT_TIMEOUT_S=10       # joiners exit after their stdin is closed
readonly STOP_TIMEOUT_S=5        # SIGTERM grace period before SIGKILL
readonly DEFAULT_RUNS=5
readonly MAX_RUNS=100
readonly LOG_TAIL_LINES=20

# name | peer A | peer B | loss % | delay ms | node relay | expectation
readonly SCENARIOS=(cone public-cone symmetric-relay symmetric-norelay lossy-cone cut-cone)

# --- paths -----------------------------------------------------------------------

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
# shellcheck source=testnet/lib.sh
source "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(dirname -- "$SCRIPT_DIR")"
readonly REPO_ROOT
PROG="testnet/$(basename -- "${BASH_SOURCE[0]}")" # for messages
readonly PROG

# State directory: the lab of `up`, per-run logs of the scenarios, results.
STATE="${KADRTC_NAT_DIR:-${KADRTC_TESTNET_DIR:-$SCRIPT_DIR/.run}/nat}"
[[ $STATE == /* ]] || STATE="$PWD/$STATE"

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
[[ $TARGET_DIR == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"

BIN=""      # kadrtc binary (resolve_bin / build_bin)
NETDELAY="" # kadrtc-netdelay binary, if found (find_netdelay)
PYTHON=""   # absolute path of python3 (also run inside the namespaces)

# --- embedded python helpers ---------------------------------------------------------

# Node ready line. argv: FILE WANT_IP. Prints "<peer_id>\t<listen addr>\t<stun>\t<relay>"
# (the listen address on WANT_IP if there is one, with /p2p/<id>).
# Exit 1: no ready line yet; exit 2: malformed.
readonly PY_READY='
import json, sys
path, want = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8", errors="replace") as f:
    for raw in f:
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
        mine = [a for a in addrs if a.startswith("/ip4/" + want + "/")]
        addr = (mine or addrs)[0]
        if "/p2p/" not in addr:
            addr += "/p2p/" + peer
        print("\t".join([peer, addr, str(ev.get("stun") or "-"), str(ev.get("relay") or "-")]))
        sys.exit(0)
sys.exit(1)
'

# Judge one run and append its record to a JSON-lines file. argv: OUT_JSONL
# SCENARIO RUN RUNS EXPECT T0_MS DEADLINE_S RUN_DIR A_EXIT B_EXIT SETUP_ERROR.
# Reads RUN_DIR/{A,B}.out ("<epoch ms> <json>" lines). Prints one progress line.
# Exit 0: the run met its expectation; 1: it did not.
readonly PY_EVAL='
import json, sys
(out, scenario, run, runs, expect, t0, deadline_s, run_dir,
 a_exit, b_exit, setup_error) = sys.argv[1:12]
run, runs, deadline_ms = int(run), int(runs), int(deadline_s) * 1000
t0 = int(t0) if t0 else 0
def load(path):
    evs = []
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return evs
    with f:
        for raw in f:
            ts, _, text = raw.rstrip("\r\n").partition(" ")
            try:
                ts, ev = int(ts), json.loads(text)
            except ValueError:
                continue
            if isinstance(ev, dict):
                evs.append((ts, ev))
    return evs
side = {}
for who, code in (("A", a_exit), ("B", b_exit)):
    evs = load(run_dir + "/" + who + ".out") if t0 else []
    s = {"open_ms": None, "elapsed_ms": None, "local": None, "remote": None,
         "errors": [], "exit_status": int(code) if code.lstrip("-").isdigit() else None,
         "opens_ms": [], "left_ms": []}
    for ts, ev in evs:
        if ev.get("event") == "channel_open":
            s["opens_ms"].append(ts - t0)
        if ev.get("event") == "peer_left":
            s["left_ms"].append(ts - t0)
        if ev.get("event") == "channel_open" and s["open_ms"] is None:
            s.update(open_ms=ts - t0, elapsed_ms=ev.get("elapsed_ms"),
                     local=ev.get("local"), remote=ev.get("remote"))
        elif ev.get("event") == "error" and len(s["errors"]) < 20:
            s["errors"].append({"at_ms": ts - t0, "kind": ev.get("kind"),
                                "message": ev.get("message")})
    side[who] = s
def pair(s):
    return "%s\u2194%s" % (s["local"] or "?", s["remote"] or "?")
reasons, time_ms = [], None
if setup_error:
    reasons.append(setup_error)
elif expect in ("direct", "relay"):
    for who in "AB":
        s = side[who]
        if s["open_ms"] is None:
            reasons.append("%s: no channel_open within %s s" % (who, deadline_s))
            continue
        if s["open_ms"] > deadline_ms:
            reasons.append("%s: channel_open after the %s s deadline" % (who, deadline_s))
        if not s["local"] or not s["remote"]:
            reasons.append("%s: candidate pair types not reported" % who)
            continue
        relayed = "relay" in (s["local"], s["remote"])
        if expect == "direct" and relayed:
            reasons.append("%s: pair %s is relayed (expected direct)" % (who, pair(s)))
        if expect == "relay" and not relayed:
            reasons.append("%s: pair %s has no relay candidate" % (who, pair(s)))
    if side["A"]["open_ms"] is not None and side["B"]["open_ms"] is not None:
        time_ms = max(side["A"]["open_ms"], side["B"]["open_ms"])
elif expect == "reconnect":
    def read_ms(name):
        try:
            return int(open(run_dir + "/" + name).read()) - t0
        except (OSError, ValueError):
            return None
    cut, restored = read_ms("cut_ms"), read_ms("restored_ms")
    if cut is None or restored is None:
        reasons.append("the link was not cut (no channel_open within %s s before it)" % deadline_s)
    else:
        back = []
        for who in "AB":
            s = side[who]
            left = [t for t in s["left_ms"] if t >= cut]
            again = [t for t in s["opens_ms"] if t > cut]
            if not left:
                reasons.append("%s: no peer_left after the cut" % who)
            else:
                s["left_after_cut_ms"] = left[0] - cut
            if not again:
                reasons.append("%s: no channel_open again after the restored link" % who)
            elif left and again[0] < left[0]:
                reasons.append("%s: channel_open again before peer_left" % who)
            else:
                back.append(again[0] - restored)
        if len(back) == 2:
            time_ms = max(back)
else:  # no_path
    opened = [w for w in "AB" if side[w]["open_ms"] is not None]
    if opened:
        reasons.append("channel_open from %s (expected none)" % " and ".join(opened))
    hits = sorted((e["at_ms"], w) for w in "AB" for e in side[w]["errors"] if e["kind"] == "no_path")
    if not hits:
        kinds = sorted({str(e["kind"]) for w in "AB" for e in side[w]["errors"]})
        reasons.append("no error of kind no_path within %s s (error kinds seen: %s)"
                       % (deadline_s, ", ".join(kinds) or "none"))
    else:
        time_ms = hits[0][0]
        if time_ms > deadline_ms:
            reasons.append("first no_path error after %d ms (deadline %s s)" % (time_ms, deadline_s))
ok = not reasons
rec = {"scenario": scenario, "run": run, "pass": ok, "reasons": reasons,
       "expect": expect, "time_ms": time_ms, "A": side["A"], "B": side["B"], "dir": run_dir}
with open(out, "a", encoding="utf-8") as f:
    f.write(json.dumps(rec) + "\n")
line = "%s run %d/%d: %s" % (scenario, run, runs, "PASS" if ok else "FAIL")
if time_ms is not None:
    what = {"no_path": " to no_path", "reconnect": " from the restored link to both open again"}
    line += "  %d ms%s" % (time_ms, what.get(expect, " join-to-open"))
if expect == "reconnect":
    lefts = [side[w].get("left_after_cut_ms") for w in "AB"]
    if None not in lefts:
        line += "  (peer_left %d / %d ms after the cut)" % tuple(lefts)
for who in "AB":
    if side[who]["open_ms"] is not None:
        line += "  %s %s" % (who, pair(side[who]))
if reasons:
    line += "  (" + "; ".join(reasons) + ")"
print(line)
sys.exit(0 if ok else 1)
'

# Summarise the runs. argv: JSONL OUT_JSON BINARY NETDELAY RUNS JOIN_ARGS SCENARIO...
# Prints the table, writes OUT_JSON atomically. Exit 0 iff every scenario passed.
readonly PY_SUMMARY='
import collections, datetime, json, os, statistics, sys
jsonl, out, binary, netdelay, runs, join_args = sys.argv[1:7]
names = sys.argv[7:]
recs = collections.defaultdict(list)
try:
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            recs[r["scenario"]].append(r)
except OSError:
    pass
def num(x):
    return int(x) if float(x).is_integer() else round(x, 1)
rows, docs, all_ok = [], [], True
for name in names:
    rs = sorted(recs.get(name, []), key=lambda r: r["run"])
    passed = sum(1 for r in rs if r["pass"])
    ok = bool(rs) and passed == len(rs) and len(rs) == int(runs)
    all_ok &= ok
    pairs = collections.Counter()
    for r in rs:
        for w in "AB":
            s = r[w]
            if s["open_ms"] is not None:
                pairs["%s\u2194%s" % (s["local"] or "?", s["remote"] or "?")] += 1
    times = [r["time_ms"] for r in rs if r["pass"] and r["time_ms"] is not None]
    expect = rs[0]["expect"] if rs else "?"
    med = num(statistics.median(times)) if times else None
    mx = max(times) if times else None
    rows.append((name, "%d/%d" % (passed, len(rs)), "PASS" if ok else "FAIL",
                 ", ".join("%s \u00d7%d" % kv for kv in pairs.most_common()) or "-",
                 {"no_path": "no_path", "reconnect": "reopen"}.get(expect, "open"),
                 "-" if med is None else "%s ms" % med, "-" if mx is None else "%d ms" % mx))
    docs.append({"name": name, "expect": expect, "passed": passed, "total": len(rs),
                 "outcome": "PASS" if ok else "FAIL", "pair_types": dict(pairs),
                 "median_ms": med, "max_ms": mx, "runs": rs})
head = ("scenario", "passed", "outcome", "pair types seen (local\u2194remote, per side)",
        "time to", "median", "max")
width = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
fmt = "  ".join("%%-%ds" % w for w in width)
print(fmt % head)
for r in rows:
    print(fmt % r)
print("(time: from starting both joiners until both reported channel_open, or until the first")
print(" no_path error; reopen: from the restored link until both reported channel_open again;")
print(" median and max over the passing runs; measured by the script)")
doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
       "binary": binary, "netdelay": netdelay or None, "runs_per_scenario": int(runs),
       "nat_join_args": join_args, "all_passed": all_ok, "scenarios": docs}
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, out)
sys.exit(0 if all_ok else 1)
'

# Probes for the selftest, run inside the namespaces.
#   ping DST COUNT INTERVAL_S WAIT_S        ICMP echo; prints {"sent","received","rtt_ms":[...]}
#   udp-echo IP PORT                        echo UDP datagrams back; prints "ready"
#   udp-probe IP PORT LISTEN_S DST:PORT...  send "probe" to each DST from IP:PORT, print
#                                           "sent", then collect for LISTEN_S and print
#                                           {"received": [[ip, port], ...]}
#   udp-send IP PORT DST:PORT               send one datagram from IP:PORT
#   mappings LAN_IP PORT                    stdin: /proc/net/nf_conntrack; prints the
#                                           router mappings of LAN_IP:PORT as JSON
readonly PY_PROBE='
import json, os, select, socket, struct, sys, time
cmd, args = sys.argv[1], sys.argv[2:]
def hostport(s):
    h, _, p = s.rpartition(":")
    return h, int(p)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
if cmd == "ping":
    dst, count, interval, wait = args[0], int(args[1]), float(args[2]), float(args[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, sent, rtt = os.getpid() & 0xFFFF, {}, {}
    def take(packet):
        data, addr = packet
        ihl = (data[0] & 0x0F) * 4
        t, _, _, rid, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and rid == ident and addr[0] == dst and seq in sent and seq not in rtt:
            rtt[seq] = (time.monotonic() - sent[seq]) * 1000
    start, i, end = time.monotonic(), 0, None
    while True:
        now = time.monotonic()
        if i < count and now >= start + i * interval:
            body = struct.pack("!d", now)
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, i)
            s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, i) + body, (dst, 0))
            sent[i] = now
            i += 1
            if i == count:
                end = now + wait
            elif i == 1:  # let echo 0 set up the conntrack entries first (below)
                while 0 not in rtt and time.monotonic() < now + 1:
                    if select.select([s], [], [], 0.05)[0]:
                        take(s.recvfrom(4096))
                start = time.monotonic() - interval
            continue
        if i >= count and (now >= end or len(rtt) == count):
            break
        nxt = start + i * interval if i < count else end
        if select.select([s], [], [], max(0.0, nxt - now))[0]:
            take(s.recvfrom(4096))
    print(json.dumps({"sent": count, "received": len(rtt), "rtt_ms": sorted(rtt.values())}))
elif cmd == "udp-echo":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args[0], int(args[1])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
elif cmd == "udp-probe":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args[0], int(args[1])))
    listen = float(args[2])
    for d in args[3:]:
        s.sendto(b"probe", hostport(d))
    print("sent", flush=True)
    got, end = [], time.monotonic() + listen
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        if select.select([s], [], [], left)[0]:
            try:
                _, addr = s.recvfrom(2048)
                got.append(list(addr))
            except OSError:  # ICMP errors surface as ECONNREFUSED etc.
                pass
    print(json.dumps({"received": got}))
elif cmd == "udp-send":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args[0], int(args[1])))
    s.sendto(b"unsolicited", hostport(args[2]))
elif cmd == "mappings":
    lan, port, maps = args[0], args[1], []
    for line in sys.stdin:
        f = line.split()
        if "udp" not in f:
            continue
        kv = [x.split("=", 1) for x in f if "=" in x]
        src = [v for k, v in kv if k == "src"]
        dst = [v for k, v in kv if k == "dst"]
        sp = [v for k, v in kv if k == "sport"]
        dp = [v for k, v in kv if k == "dport"]
        if len(src) >= 2 and len(dp) >= 2 and src[0] == lan and sp[0] == port:
            maps.append({"to": "%s:%s" % (dst[0], dp[0]), "mapped": "%s:%s" % (dst[1], dp[1])})
    print(json.dumps(sorted(maps, key=lambda m: m["to"])))
else:
    sys.exit("unknown probe " + cmd)
'

# Fails unless no route or address of the host overlaps LAB_NET. stdin: `ip -4 route
# show table all` and `ip -4 addr show` output. Prints the clashing lines.
readonly PY_OVERLAP='
import ipaddress, re, sys
lab, bad = ipaddress.ip_network(sys.argv[1]), []
for line in sys.stdin:
    for tok in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", line):
        try:
            net = ipaddress.ip_network(tok, strict=False)
        except ValueError:
            continue
        if net.prefixlen > 0 and net.overlaps(lab):
            bad.append(line.strip())
            break
print("\n".join(bad))
sys.exit(1 if bad else 0)
'

# --- small utilities ---------------------------------------------------------------

DIE_MSG=""

note() { printf '%s\n' "$*"; }
step() { printf '==> %s\n' "$*"; }

# has_error_kind FILE KIND: FILE has an error event of that kind.
has_error_kind() {
  grep -E "\"event\"[[:space:]]*:[[:space:]]*\"error\"" "$1" 2>/dev/null |
    grep -qE "\"kind\"[[:space:]]*:[[:space:]]*\"$2\""
}

# --- preflight ---------------------------------------------------------------------

# need_root_tools [iptables]: root, ip, nft, python3 (+ iptables when asked).
need_root_tools() {
  ((EUID == 0)) || die "the NAT lab creates network namespaces and must run as root (try: sudo $PROG ...)"
  local cmd missing=()
  for cmd in ip nft sysctl "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  if ((${#missing[@]} > 0)); then
    die "missing: ${missing[*]}; install them with: apt-get install nftables iptables iproute2 procps"
  fi
  for cmd in python3 grep mkfifo tail flock; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required but not installed"
  done
  PYTHON=$(command -v python3)
  ip netns list >/dev/null 2>&1 || die "'ip netns' does not work here (no network namespace support?)"
}

# check_lab_net: refuse to run if the host routes or owns anything in LAB_NET.
check_lab_net() {
  local clash
  if ! clash=$({ ip -4 route show table all; ip -4 addr show; } | "$PYTHON" -c "$PY_OVERLAP" "$LAB_NET"); then
    die "the host already uses addresses in $LAB_NET, which the lab needs for itself:
$clash"
  fi
}

# lab_namespaces: every namespace on this machine named like a lab namespace -> FOUND_NS.
FOUND_NS=()
lab_namespaces() {
  local name _rest
  FOUND_NS=()
  while read -r name _rest; do
    [[ $name =~ $NS_PATTERN ]] && FOUND_NS+=("$name")
  done < <(ip netns list 2>/dev/null)
  return 0
}

# refuse_if_lab_up: one lab per machine.
refuse_if_lab_up() {
  lab_namespaces
  if ((${#FOUND_NS[@]} > 0)); then
    die "a NAT lab is already up (namespaces: ${FOUND_NS[*]}); remove it first with: $PROG down"
  fi
}

# take_lock: one nat.sh command at a time per state dir (the fd stays open
# until we exit; spawned processes close it).
LOCK_FD=""
take_lock() {
  mkdir -p -- "$STATE"
  exec {LOCK_FD}>"$STATE/lock"
  flock -n "$LOCK_FD" || die "another $PROG command is running with state dir $STATE"
}

# --- binaries ----------------------------------------------------------------------

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
  BIN="$TARGET_DIR/release/kadrtc"
  [[ -x $BIN ]] || die "kadrtc binary not found at $BIN
  build it with:  cargo build --release -p kadrtc-node --bin kadrtc
  or point KADRTC_BIN at an existing binary"
}

# build_bin: build the release binary unless KADRTC_BIN is set.
build_bin() {
  if [[ -n ${KADRTC_BIN:-} ]]; then
    resolve_bin
    step "using KADRTC_BIN=$BIN (not building)"
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found; build kadrtc elsewhere and set KADRTC_BIN"
  step "building kadrtc (release)…"
  (cd -- "$REPO_ROOT" && cargo build --release -p kadrtc-node --bin kadrtc) || die "cargo build failed"
  BIN="$TARGET_DIR/release/kadrtc"
  [[ -x $BIN ]] || die "cargo build succeeded but $BIN does not exist"
}

# find_netdelay: KADRTC_NETDELAY_BIN, else the release build, else the debug
# build -> NETDELAY (empty if none). Never builds.
find_netdelay() {
  NETDELAY=""
  if [[ -n ${KADRTC_NETDELAY_BIN:-} ]]; then
    NETDELAY=$KADRTC_NETDELAY_BIN
    [[ $NETDELAY == */* ]] || NETDELAY=$(command -v -- "$NETDELAY" || true)
    [[ -z $NETDELAY || $NETDELAY == /* ]] || NETDELAY="$PWD/$NETDELAY"
    [[ -n $NETDELAY && -x $NETDELAY ]] || die "KADRTC_NETDELAY_BIN='$KADRTC_NETDELAY_BIN' is not an executable file"
    return 0
  fi
  local cand
  for cand in "$TARGET_DIR/release/kadrtc-netdelay" "$TARGET_DIR/debug/kadrtc-netdelay"; do
    if [[ -x $cand ]]; then
      NETDELAY=$cand
      return 0
    fi
  done
}

readonly NETDELAY_HINT="build it with: cargo build --release -p kadrtc-netdelay (or set KADRTC_NETDELAY_BIN)"

# --- the lab -----------------------------------------------------------------------

# What lab to build (set before lab_up):
LAB_A=cone    # peer A: cone | symmetric (behind router A) | public (on the internet segment)
LAB_B=cone    # peer B: cone | symmetric (behind router B)
LAB_LOSS=0    # % dropped on each router's forwarding path, each direction
LAB_DELAY=0   # ms added on each router's forwarding path, each direction
LAB_RELAY=0   # 1: the node runs with --relay
LAB_NODE=1    # 0: no kadrtc node (selftest)
LAB_DIR=""    # where node / netdelay logs go

# What lab_up built:
LAB_ID=""       # 4 hex digits
LAB_NS=()       # namespaces created, in creation order
STARTED=()      # PIDs of every background process we started
BOOT_ADDR=""    # the node's listen multiaddr (with /p2p/)
A_IP="" B_IP="" # the peers' own addresses (--listen)
NODE_PEER="" NODE_STUN="" NODE_RELAY=""

ns() { printf 'kn%s-%s' "$LAB_ID" "$1"; } # ns ROLE: a namespace name of this lab
ifn() { printf 'kn%s-%s' "$LAB_ID" "$1"; } # ifn NAME: an interface name (<= 15 chars)

# nsx ROLE CMD...: run CMD inside the lab namespace ROLE.
nsx() {
  local role=$1
  shift
  ip netns exec "$(ns "$role")" "$@"
}

# add_ns ROLE FORWARD: create a namespace with lo up, IPv6 off, rp_filter off
# (and ip_forward on when FORWARD=1), recorded for teardown before it exists.
add_ns() {
  local name
  name=$(ns "$1")
  LAB_NS+=("$name")
  ip netns add "$name" || die "cannot create network namespace $name"
  ip -n "$name" link set lo up
  nsx "$1" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    "net.ipv4.ip_forward=$2" >/dev/null || die "sysctl failed in $name"
  # No IPv6: no link-local addresses, so no stray ICE candidates.
  nsx "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    >/dev/null 2>&1 || true
}

# link ROLE1 IF1 IP1 ROLE2 IF2 IP2: a veth pair between two namespaces, a /24
# address on each end, both up. Created inside the namespaces: the host's
# namespace never sees these interfaces.
link() {
  local n1 n2 i1 i2
  n1=$(ns "$1") i1=$(ifn "$2") n2=$(ns "$4") i2=$(ifn "$5")
  ip link add "$i1" netns "$n1" type veth peer name "$i2" netns "$n2" ||
    die "cannot create the veth pair $n1/$i1 <-> $n2/$i2"
  ip -n "$n1" addr add "$3/24" dev "$i1"
  ip -n "$n2" addr add "$6/24" dev "$i2"
  ip -n "$n1" link set "$i1" up
  ip -n "$n2" link set "$i2" up
}

# router_rules ROLE MODE: the home router's nftables ruleset.
router_rules() {
  local role=$1 mode=$2 wan loss="" random=""
  wan=$(ifn wan)
  [[ $mode == symmetric ]] && random=" fully-random"
  if ((LAB_LOSS > 0)); then
    loss="numgen random mod 100 < $LAB_LOSS counter drop comment \"emulated loss\""
  fi
  nsx "$role" nft -f - <<EOF || die "nft rejected the ruleset of router $role"
table ip $NFT_TABLE {
  # cone: masquerade keeps the source port when it can (endpoint-independent
  # mapping); symmetric: fully-random picks a new port for every new flow.
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "$wan" masquerade$random comment "nat $mode"
  }
  # Forwarding: optional loss (both directions), then the WAN side only lets
  # replies in. Without the drop, an early packet from the other peer would
  # create a conntrack entry that later clashes with our own mapping.
  chain forward {
    type filter hook forward priority filter; policy accept;
    $loss
    iifname "$wan" ct state established,related accept
    iifname "$wan" counter drop comment "unsolicited inbound"
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$wan" ct state established,related accept
    iifname "$wan" counter drop comment "unsolicited inbound"
  }
}
EOF
}

# spawn OUT ERR ROLE CMD...: run CMD in namespace ROLE in the background, stdin
# /dev/null, stdout OUT, stderr ERR; its PID goes to STARTED and SPAWNED.
SPAWNED=""
spawn() {
  local out=$1 err=$2 role=$3
  shift 3
  : >"$out" # truncated now, not later in the child: wait_line must not see old lines
  : >"$err"
  ip netns exec "$(ns "$role")" "$@" </dev/null >"$out" 2>"$err" {LOCK_FD}>&- &
  SPAWNED=$!
  STARTED+=("$SPAWNED")
}

# wait_line FILE REGEX PID WHAT: poll FILE until a line matches REGEX; fail if
# PID exits or READY_TIMEOUT_S passes.
wait_line() {
  local file=$1 re=$2 pid=$3 what=$4 deadline status
  now_ms
  deadline=$((NOW_MS + READY_TIMEOUT_S * 1000))
  until grep -qE -- "$re" "$file" 2>/dev/null; do
    if ! pid_alive "$pid"; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      forget_pid "$pid"
      die "$what exited (status $status) before it was ready; see ${file%.*}.log"
    fi
    now_ms
    ((NOW_MS < deadline)) || die "$what printed no ready line within ${READY_TIMEOUT_S} s; see ${file%.*}.log"
    sleep "$POLL_INTERVAL"
  done
}

# start_netdelay ROLE QUEUE: kadrtc-netdelay in router ROLE holds every
# forwarded packet LAB_DELAY ms (iptables NFQUEUE in the mangle FORWARD chain).
start_netdelay() {
  local role=$1 queue=$2 out="$LAB_DIR/netdelay-$1.out" err="$LAB_DIR/netdelay-$1.log"
  [[ -n $NETDELAY ]] || die "a delay was asked for but kadrtc-netdelay was not found; $NETDELAY_HINT"
  spawn "$out" "$err" "$role" "$NETDELAY" --queue "$queue" --delay-ms "$LAB_DELAY"
  wait_line "$out" '^ready queue=' "$SPAWNED" "kadrtc-netdelay in router $role"
  nsx "$role" iptables -t mangle -A FORWARD -j NFQUEUE --queue-num "$queue" --queue-bypass ||
    die "iptables could not add the NFQUEUE rule in router $role"
}

# start_node: the public kadrtc node; sets BOOT_ADDR, NODE_PEER, NODE_STUN, NODE_RELAY.
start_node() {
  local args=(node --ephemeral --listen "/ip4/$NODE_IP/tcp/$NODE_TCP_PORT" --stun-port "$NODE_STUN_PORT" --json)
  ((LAB_RELAY)) && args+=(--relay)
  spawn "$LAB_DIR/node.out" "$LAB_DIR/node.log" node "$BIN" "${args[@]}"
  wait_line "$LAB_DIR/node.out" '"event"[[:space:]]*:[[:space:]]*"ready"' "$SPAWNED" "the kadrtc node"
  local parsed
  parsed=$("$PYTHON" -c "$PY_READY" "$LAB_DIR/node.out" "$NODE_IP") ||
    die "the kadrtc node printed a ready line without peer_id/listen addresses"
  IFS=$'\t' read -r NODE_PEER BOOT_ADDR NODE_STUN NODE_RELAY <<<"$parsed"
  printf '%s\n' "$NODE_PEER" "$BOOT_ADDR" "$NODE_STUN" "$NODE_RELAY" >"$LAB_DIR/node.info"
  printf '%s\n' "$BOOT_ADDR" >"$LAB_DIR/bootstrap.addr"
}

# lab_up: build the lab described by LAB_* (fresh id, fresh namespaces).
lab_up() {
  local mode
  LAB_ID=$(printf '%04x' "$((RANDOM % 65536))")
  LAB_NS=()
  mkdir -p -- "$LAB_DIR"
  rm -f -- "$LAB_DIR"/node.{out,log} "$LAB_DIR"/netdelay-*.{out,log} "$LAB_DIR/bootstrap.addr"
  printf '%s\n' "$LAB_ID" >"$LAB_DIR/lab.id"

  # The internet: plain routing between point-to-point /24s.
  add_ns inet 1
  add_ns node 0
  link inet node "$INET_NODE_IP" node eth "$NODE_IP"
  ip -n "$(ns node)" route add default via "$INET_NODE_IP"

  # Peer A: behind router A, or straight on the internet.
  if [[ $LAB_A == public ]]; then
    add_ns A 0
    link inet A "$INET_PUB_IP" A eth "$PUB_A_IP"
    ip -n "$(ns A)" route add default via "$INET_PUB_IP"
    A_IP=$PUB_A_IP
  else
    add_ns rA 1
    add_ns A 0
    link inet rA "$INET_RA_IP" rA wan "$RA_WAN_IP"
    link rA lan "$RA_LAN_IP" A eth "$A_LAN_IP"
    ip -n "$(ns rA)" route add default via "$INET_RA_IP"
    ip -n "$(ns A)" route add default via "$RA_LAN_IP"
    router_rules rA "$LAB_A"
    A_IP=$A_LAN_IP
  fi

  # Peer B: always behind router B.
  add_ns rB 1
  add_ns B 0
  link inet rB "$INET_RB_IP" rB wan "$RB_WAN_IP"
  link rB lan "$RB_LAN_IP" B eth "$B_LAN_IP"
  ip -n "$(ns rB)" route add default via "$INET_RB_IP"
  ip -n "$(ns B)" route add default via "$RB_LAN_IP"
  router_rules rB "$LAB_B"
  B_IP=$B_LAN_IP

  if ((LAB_DELAY > 0)); then
    [[ $LAB_A == public ]] || start_netdelay rA "$QUEUE_RA"
    start_netdelay rB "$QUEUE_RB"
  fi
  if ((LAB_NODE)); then start_node; fi
  mode="A $LAB_A, B $LAB_B"
  ((LAB_LOSS > 0)) && mode+=", loss ${LAB_LOSS}%"
  ((LAB_DELAY > 0)) && mode+=", delay ${LAB_DELAY} ms"
  ((LAB_RELAY)) && mode+=", relay"
  printf '%s\n' "$mode" >"$LAB_DIR/lab.mode"
}

# forget_pid PID: drop a reaped PID from STARTED, so that teardown never
# signals a PID the kernel may have reused.
forget_pid() {
  local pid keep=()
  for pid in "${STARTED[@]}"; do
    [[ $pid == "$1" ]] || keep+=("$pid")
  done
  STARTED=("${keep[@]}")
}

# destroy_namespaces NS...: processes first (the ones we started, then anything
# still inside the namespaces), then the namespaces themselves.
destroy_namespaces() {
  local name pids=() p
  for name in "$@"; do
    [[ -e /run/netns/$name || -e /var/run/netns/$name ]] || continue
    while read -r p; do [[ $p =~ ^[0-9]+$ ]] && pids+=("$p"); done < <(ip netns pids "$name" 2>/dev/null)
  done
  kill_all "${STARTED[@]}" "${pids[@]}"
  for name in "$@"; do
    [[ -e /run/netns/$name || -e /var/run/netns/$name ]] || continue
    if ! ip netns delete "$name" 2>/dev/null && [[ -e /run/netns/$name || -e /var/run/netns/$name ]]; then
      printf '%s: warning: could not delete namespace %s\n' "$PROG" "$name" >&2
    fi
  done
}

# lab_down: tear down what lab_up built. Idempotent.
lab_down() {
  close_stdins
  destroy_namespaces "${LAB_NS[@]}"
  local pid
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  STARTED=()
  LAB_NS=()
}

# --- one scenario run (in a subshell of its own) -------------------------------------

RUN_DIR=""
A_PID="" B_PID=""  # joiners
A_FD="" B_FD=""    # our write ends of their stdin fifos
RUN_T0=""
RUN_RECORDED=0

# scenario_spec NAME: the lab and expectation of a scenario -> LAB_*, SC_EXPECT,
# SC_DEADLINE. Returns 1 for an unknown name.
SC_EXPECT="" SC_DEADLINE=0
scenario_spec() {
  LAB_LOSS=0 LAB_DELAY=0 LAB_RELAY=0 LAB_NODE=1
  SC_EXPECT=direct SC_DEADLINE=$OPEN_DEADLINE_S
  case $1 in
  cone) LAB_A=cone LAB_B=cone ;;
  public-cone) LAB_A=public LAB_B=cone ;;
  symmetric-relay) LAB_A=symmetric LAB_B=symmetric LAB_RELAY=1 SC_EXPECT=relay ;;
  symmetric-norelay) LAB_A=symmetric LAB_B=symmetric SC_EXPECT=no_path SC_DEADLINE=$NOPATH_DEADLINE_S ;;
  lossy-cone) LAB_A=cone LAB_B=cone LAB_LOSS=5 LAB_DELAY=30 ;;
  cut-cone) LAB_A=cone LAB_B=cone SC_EXPECT=reconnect ;;
  *) return 1 ;;
  esac
}

# start_joiner WHO ROLE IP: `kadrtc join` in namespace ROLE, stdin on a fifo we
# hold open, stdout through a timestamping filter into WHO.out.
JOIN_EXTRA=()
FILTERS=() # the timestamping filters
start_joiner() {
  local who=$1 role=$2 ip=$3 d=$RUN_DIR pid
  stamp_lines <"$d/$who.pipe" >"$d/$who.out" {A_FD}>&- {B_FD}>&- {LOCK_FD}>&- &
  STARTED+=("$!")
  FILTERS+=("$!")
  ip netns exec "$(ns "$role")" "$BIN" join "$ROOM" --listen "/ip4/$ip/tcp/0" \
    --bootstrap "$BOOT_ADDR" --json "${JOIN_EXTRA[@]}" \
    <"$d/$who.stdin" >"$d/$who.pipe" 2>"$d/$who.log" {A_FD}>&- {B_FD}>&- {LOCK_FD}>&- &
  pid=$!
  STARTED+=("$pid")
  if [[ $who == A ]]; then A_PID=$pid; else B_PID=$pid; fi
}

# run_done: the run's outcome is decided (what it waits for has happened).
run_done() {
  local d=$RUN_DIR
  if [[ $SC_EXPECT == no_path ]]; then
    has_error_kind "$d/A.out" no_path || has_error_kind "$d/B.out" no_path ||
      has_event "$d/A.out" channel_open || has_event "$d/B.out" channel_open
  else
    has_event "$d/A.out" channel_open && has_event "$d/B.out" channel_open
  fi
}

# opened_twice: both joiners reported channel_open twice (cut-cone: once before the cut,
# once after it).
opened_twice() {
  local who n
  for who in A B; do
    n=$(grep -cE '"event"[[:space:]]*:[[:space:]]*"channel_open"' "$RUN_DIR/$who.out" 2>/dev/null) || n=0
    ((n >= 2)) || return 1
  done
}

# cut_link: cut-cone: router A's internet link down for CUT_S s, then up again (with its
# default route, which the kernel drops with the link); the times go to cut_ms and
# restored_ms in the run directory. Then waits (RECONNECT_DEADLINE_S) for both joiners to
# open their channel again by themselves.
cut_link() {
  local wan deadline
  wan=$(ifn wan)
  now_ms
  printf '%s\n' "$NOW_MS" >"$RUN_DIR/cut_ms"
  ip -n "$(ns rA)" link set "$wan" down
  sleep "$CUT_S"
  ip -n "$(ns rA)" link set "$wan" up
  ip -n "$(ns rA)" route replace default via "$INET_RA_IP"
  now_ms
  printf '%s\n' "$NOW_MS" >"$RUN_DIR/restored_ms"
  deadline=$((NOW_MS + RECONNECT_DEADLINE_S * 1000))
  while ! opened_twice; do
    now_ms
    ((NOW_MS < deadline)) || break
    if ! pid_alive "$A_PID" || ! pid_alive "$B_PID"; then break; fi
    sleep "$POLL_INTERVAL"
  done
}

# exit_status PID -> EXIT_STATUS ("running" if it is still alive).
EXIT_STATUS=""
exit_status() {
  if pid_alive "$1"; then
    EXIT_STATUS=running
  else
    EXIT_STATUS=0
    wait "$1" 2>/dev/null || EXIT_STATUS=$?
    forget_pid "$1"
  fi
}

# record_run SETUP_ERROR: judge the run (PY_EVAL) once. Returns its verdict.
A_EXIT="" B_EXIT=""
record_run() {
  ((RUN_RECORDED)) && return 0
  RUN_RECORDED=1
  PYTHONIOENCODING=utf-8 "$PYTHON" -c "$PY_EVAL" "$RUN_JSONL" "$RUN_NAME" "$RUN_I" "$RUN_N" \
    "$SC_EXPECT" "$RUN_T0" "$SC_DEADLINE" "$RUN_DIR" "$A_EXIT" "$B_EXIT" "$1"
}

# print_run_logs: the tails of every log of the run (after a failure).
print_run_logs() {
  local f
  for f in A.out A.log B.out B.log node.log node.out netdelay-rA.log netdelay-rB.log; do
    [[ -e $RUN_DIR/$f ]] || continue
    [[ $f == netdelay-* && ! -s $RUN_DIR/$f ]] && continue
    tail_file "$f" "$RUN_DIR/$f"
  done
}

# run_on_exit: EXIT trap of a run subshell: record a failure if the run did not
# get that far, tear down its lab, show the logs on failure.
run_on_exit() {
  local rc=$? verdict=0
  set +e
  if ((!RUN_RECORDED)); then
    record_run "${RUN_FAIL_MSG:-${DIE_MSG:-setup failed (exit status $rc)}}"
    verdict=1
  fi
  lab_down
  rm -f -- "$RUN_DIR"/{A,B}.{stdin,pipe}
  if ((rc != 0 || verdict != 0)); then
    print_run_logs >&2
    ((rc > 1)) || rc=1
  fi
  exit "$rc"
}

# run_once NAME I N: one run of scenario NAME in a fresh lab. Exit 0 when it met
# the expectation, 1 when not (always recorded in RUN_JSONL), 130/143 on signals.
RUN_NAME="" RUN_I=0 RUN_N=0 RUN_JSONL="" RUN_FAIL_MSG="" ROOM=""
run_once() {
  RUN_NAME=$1 RUN_I=$2 RUN_N=$3
  scenario_spec "$RUN_NAME"
  RUN_DIR="$STATE/scenarios/$RUN_NAME/run-$RUN_I"
  LAB_DIR=$RUN_DIR
  mkdir -p -- "$RUN_DIR"
  rm -f -- "$RUN_DIR"/{A,B}.{out,log,stdin,pipe} "$RUN_DIR/room"
  trap run_on_exit EXIT
  trap 'RUN_FAIL_MSG="interrupted"; exit 130' INT
  trap 'RUN_FAIL_MSG="terminated"; exit 143' TERM

  if ((LAB_DELAY > 0)) && [[ -z $NETDELAY ]]; then
    die "kadrtc-netdelay not found (this scenario adds ${LAB_DELAY} ms delay); $NETDELAY_HINT"
  fi
  lab_up

  ROOM="nat-$RUN_NAME-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
  printf '%s\n' "$ROOM" >"$RUN_DIR/room"
  mkfifo -- "$RUN_DIR/A.stdin" "$RUN_DIR/B.stdin" "$RUN_DIR/A.pipe" "$RUN_DIR/B.pipe"
  exec {A_FD}<>"$RUN_DIR/A.stdin" {B_FD}<>"$RUN_DIR/B.stdin"
  now_ms
  RUN_T0=$NOW_MS
  start_joiner A A "$A_IP"
  start_joiner B B "$B_IP"

  # Wait (deadline SC_DEADLINE s from the start) for the outcome, or a joiner's exit.
  local deadline
  deadline=$((RUN_T0 + SC_DEADLINE * 1000))
  while ! run_done; do
    if ! pid_alive "$A_PID" || ! pid_alive "$B_PID"; then
      sleep "$POLL_INTERVAL" # let the filters flush the last lines
      run_done || break
    fi
    now_ms
    ((NOW_MS < deadline)) || break
    sleep "$POLL_INTERVAL"
  done

  if [[ $SC_EXPECT == reconnect ]] && run_done; then cut_link; fi

  # Let both leave (stdin closed), then judge.
  close_stdins
  now_ms
  deadline=$((NOW_MS + EXIT_TIMEOUT_S * 1000))
  while { pid_alive "$A_PID" || pid_alive "$B_PID"; } && ((NOW_MS < deadline)); do
    sleep "$POLL_INTERVAL"
    now_ms
  done
  exit_status "$A_PID"
  A_EXIT=$EXIT_STATUS
  exit_status "$B_PID"
  B_EXIT=$EXIT_STATUS
  # The filters end at EOF of the joiners' stdout: give them a moment to write
  # the last lines before teardown kills whatever is left.
  wait_gone 2 "${FILTERS[@]}" || true
  lab_down
  local verdict=0
  record_run "" || verdict=$?
  exit "$verdict"
}

# run_scenarios NAME...: every scenario RUNS times, then the table.
RUNS=$DEFAULT_RUNS
RUN_CHILD=""
scenarios_on_exit() {
  local rc=$?
  set +e
  if [[ -n $RUN_CHILD ]]; then
    kill -TERM "$RUN_CHILD" 2>/dev/null
    wait "$RUN_CHILD" 2>/dev/null
    RUN_CHILD=""
  fi
  # A run killed with SIGKILL leaves its lab behind: remove whatever is left.
  lab_namespaces
  if ((${#FOUND_NS[@]} > 0)); then destroy_namespaces "${FOUND_NS[@]}"; fi
  exit "$rc"
}

run_scenarios() {
  local name i rc failed=0 summary_rc=0
  need_root_tools iptables
  take_lock
  refuse_if_lab_up
  check_lab_net
  build_bin
  find_netdelay
  if [[ -n ${NAT_JOIN_ARGS:-} ]]; then
    read -ra JOIN_EXTRA <<<"$NAT_JOIN_ARGS"
    step "NAT_JOIN_ARGS: every join also gets: ${JOIN_EXTRA[*]}"
  fi
  RUN_JSONL="$STATE/results.jsonl"
  rm -f -- "$RUN_JSONL" "$STATE/results.json"
  trap scenarios_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  step "scenarios: $* ($RUNS run(s) each, a fresh lab per run; state: $STATE)"
  for name in "$@"; do
    for ((i = 1; i <= RUNS; i++)); do
      run_once "$name" "$i" "$RUNS" &
      RUN_CHILD=$!
      rc=0
      wait "$RUN_CHILD" || rc=$?
      RUN_CHILD=""
      case $rc in
      0) ;;
      1) failed=1 ;;
      130 | 143) exit "$rc" ;;
      *) failed=1 ;;
      esac
    done
  done
  trap - EXIT INT TERM
  printf '\n'
  PYTHONIOENCODING=utf-8 "$PYTHON" -c "$PY_SUMMARY" "$RUN_JSONL" "$STATE/results.json" "$BIN" \
    "$NETDELAY" "$RUNS" "${NAT_JOIN_ARGS:-}" "$@" || summary_rc=$?
  note "results written to $STATE/results.json (per-run logs in $STATE/scenarios/)"
  if ((failed || summary_rc != 0)); then
    note "scenarios: FAILED"
    exit 1
  fi
  note "scenarios: OK"
}

parse_runs() { # parse_runs ARGS...: --runs N (or --runs=N) -> RUNS; rest -> POS
  POS=()
  while (($# > 0)); do
    case $1 in
    --runs) (($# >= 2)) || die "--runs needs a number"; RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#--runs=}; shift ;;
    -*) die "unknown option: $1" ;;
    *) POS+=("$1"); shift ;;
    esac
  done
  if ! [[ $RUNS =~ ^[0-9]{1,3}$ ]] || ((10#$RUNS < 1 || 10#$RUNS > MAX_RUNS)); then
    die "--runs must be a whole number from 1 to $MAX_RUNS (got '$RUNS')"
  fi
  RUNS=$((10#$RUNS))
}

POS=()
cmd_scenarios() {
  parse_runs "$@"
  ((${#POS[@]} == 0)) || die "usage: $PROG scenarios [--runs N]"
  run_scenarios "${SCENARIOS[@]}"
}

cmd_scenario() {
  parse_runs "$@"
  ((${#POS[@]} == 1)) || die "usage: $PROG scenario NAME [--runs N]  (NAME: ${SCENARIOS[*]})"
  scenario_spec "${POS[0]}" || die "unknown scenario '${POS[0]}' (known: ${SCENARIOS[*]})"
  run_scenarios "${POS[0]}"
}

# --- selftest ------------------------------------------------------------------------

CHECKS_OK=0 CHECKS_FAILED=0
check() { # check OK|FAIL TEXT
  if [[ $1 == OK ]]; then
    CHECKS_OK=$((CHECKS_OK + 1))
    printf '  ok    %s\n' "$2"
  else
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
    printf '  FAIL  %s\n' "$2"
  fi
}

# probe ROLE ARGS...: PY_PROBE inside namespace ROLE.
probe() {
  local role=$1
  shift
  nsx "$role" "$PYTHON" -c "$PY_PROBE" "$@"
}

# drop_count ROLE CHAIN: packets counted by the router's "unsolicited inbound" rule.
drop_count() {
  nsx "$1" nft list chain ip "$NFT_TABLE" "$2" |
    sed -nE 's/.*counter packets ([0-9]+) .*unsolicited inbound.*/\1/p' | head -n 1
}

# json_get JSON EXPR: evaluate a python expression over the parsed JSON `j`.
json_get() { "$PYTHON" -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# check_that TEXT CMD...: one check: OK if CMD succeeds.
check_that() {
  local text=$1
  shift
  if "$@"; then check OK "$text"; else check FAIL "$text"; fi
}

# py_true JSON EXPR: the python expression over the parsed JSON `j` is true.
py_true() { [[ $(json_get "$1" "bool($2)") == True ]]; }

selftest_nat() { # selftest_nat MODE: one lab with both routers in MODE
  local mode=$1 r out maps fwd0 fwd1 in0 in1 got pid mapped to_node deadline
  LAB_A=$mode LAB_B=$mode LAB_LOSS=0 LAB_DELAY=0 LAB_RELAY=0 LAB_NODE=0
  LAB_DIR="$STATE/selftest"
  step "selftest: $mode NAT"
  lab_up

  r=$(probe A ping "$NODE_IP" 5 0.05 1)
  check_that "peer A pings the public host $NODE_IP through router A" py_true "$r" 'j["received"] == 5'
  r=$(probe B ping "$NODE_IP" 5 0.05 1)
  check_that "peer B pings the public host $NODE_IP through router B" py_true "$r" 'j["received"] == 5'
  r=$(probe node ping "$A_LAN_IP" 3 0.05 1)
  check_that "the public host cannot reach peer A's LAN address $A_LAN_IP (no route)" py_true "$r" 'j["received"] == 0'

  # UDP from A:40000 to two destinations; look at router A's mappings.
  spawn "$LAB_DIR/echo.out" "$LAB_DIR/echo.log" node "$PYTHON" -c "$PY_PROBE" udp-echo "$NODE_IP" 7
  wait_line "$LAB_DIR/echo.out" '^ready' "$SPAWNED" "the UDP echo server"
  fwd0=$(drop_count rA forward) in0=$(drop_count rA input)
  out="$LAB_DIR/probe.out"
  spawn "$out" "$LAB_DIR/probe.log" A "$PYTHON" -c "$PY_PROBE" udp-probe "$A_LAN_IP" 40000 2 \
    "$NODE_IP:7" "$INET_NODE_IP:9"
  pid=$SPAWNED
  wait_line "$out" '^sent' "$pid" "the UDP probe"
  maps=$(nsx rA cat /proc/net/nf_conntrack | "$PYTHON" -c "$PY_PROBE" mappings "$A_LAN_IP" 40000)
  note "        router A conntrack for $A_LAN_IP:40000: $maps"
  mapped=$(json_get "$maps" '",".join(sorted({m["mapped"] for m in j}))')
  check_that "router A has one conntrack entry per destination of $A_LAN_IP:40000" py_true "$maps" 'len(j) == 2'
  if [[ $mode == cone ]]; then
    check_that "masquerade to $RA_WAN_IP keeps port 40000 for both destinations (endpoint-independent mapping: $mapped)" \
      test "$mapped" == "$RA_WAN_IP:40000"
  else
    check_that "masquerade to $RA_WAN_IP picks a new port per destination (symmetric: $mapped)" \
      py_true "$maps" "len({m['mapped'] for m in j}) == 2 and all(m['mapped'].startswith('$RA_WAN_IP:') for m in j)"
  fi
  # Unsolicited: from another port of the node to A's mapping, and from the
  # internet (with a route it should not have) straight at A's LAN address.
  to_node=$(json_get "$maps" '[m["mapped"] for m in j if m["to"].endswith(":7")][0]')
  probe node udp-send "$NODE_IP" 5555 "$to_node"
  ip -n "$(ns inet)" route add "$A_LAN_IP/32" via "$RA_WAN_IP"
  probe inet udp-send "$INET_RA_IP" 5556 "$A_LAN_IP:40000"
  ip -n "$(ns inet)" route del "$A_LAN_IP/32" via "$RA_WAN_IP"
  wait_gone 5 "$pid" || true
  got=$(tail -n 1 "$out")
  fwd1=$(drop_count rA forward) in1=$(drop_count rA input)
  check_that "the echo reply from $NODE_IP:7 reaches peer A (ct state established)" \
    py_true "$got" "['$NODE_IP', 7] in j['received']"
  check_that "nothing else reaches peer A: not $NODE_IP:5555 -> $to_node, not the datagram routed at $A_LAN_IP ($got)" \
    py_true "$got" 'len(j["received"]) == 1'
  check_that "router A's input chain dropped the unsolicited datagram to its WAN address (counter $in0 -> $in1)" \
    test "$in1" -gt "$in0"
  check_that "router A's forward chain dropped the datagram routed at its LAN (counter $fwd0 -> $fwd1)" \
    test "$fwd1" -gt "$fwd0"
  lab_down
}

selftest_impair() { # lossy cone lab: measure ping loss and RTT through router A
  local r loss med mn lo
  LAB_A=cone LAB_B=cone LAB_LOSS=5 LAB_DELAY=30 LAB_RELAY=0 LAB_NODE=0
  lo=$((2 * LAB_DELAY))
  LAB_DIR="$STATE/selftest"
  step "selftest: cone NAT with ${LAB_LOSS}% loss and ${LAB_DELAY} ms delay on each router, each way"
  lab_up
  r=$(probe A ping "$NODE_IP" 400 0.01 2)
  loss=$(json_get "$r" 'round(100 * (1 - j["received"] / j["sent"]), 1)')
  med=$(json_get "$r" 'round(j["rtt_ms"][len(j["rtt_ms"]) // 2], 1) if j["rtt_ms"] else -1')
  mn=$(json_get "$r" 'round(j["rtt_ms"][0], 1) if j["rtt_ms"] else -1')
  note "        400 pings A -> public host: ${loss}% lost, RTT min ${mn} ms, median ${med} ms"
  note "        (expected: 1-0.95^2 = 9.75% lost, RTT >= $lo ms: the ping crosses router A twice)"
  check_that "loss ${loss}% is within 2..20%" py_true "$r" "2 <= 100 * (1 - j['received'] / j['sent']) <= 20"
  check_that "RTT min ${mn} ms >= $lo ms and median ${med} ms < $((lo + 30)) ms" \
    py_true "$r" "j['rtt_ms'] and j['rtt_ms'][0] >= $lo and j['rtt_ms'][len(j['rtt_ms']) // 2] < $((lo + 30))"
  lab_down
}

selftest_on_exit() {
  local rc=$?
  set +e
  lab_down
  exit "$rc"
}

cmd_selftest() {
  (($# == 0)) || die "usage: $PROG selftest"
  need_root_tools iptables
  take_lock
  refuse_if_lab_up
  check_lab_net
  find_netdelay
  trap selftest_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p -- "$STATE/selftest"
  selftest_nat cone
  selftest_nat symmetric
  if [[ -n $NETDELAY ]]; then
    selftest_impair
  else
    note "==> selftest: loss and delay SKIPPED: kadrtc-netdelay not found; $NETDELAY_HINT"
  fi
  trap - EXIT INT TERM
  note "selftest: $CHECKS_OK check(s) passed, $CHECKS_FAILED failed"
  ((CHECKS_FAILED == 0)) || exit 1
}

# --- up / down / status / shell / exec -------------------------------------------------

up_on_exit() {
  local rc=$?
  set +e
  printf '%s: up: FAILED: %s\n' "$PROG" "${DIE_MSG:-exit status $rc}" >&2
  print_up_logs >&2
  lab_down
  exit "$rc"
}

print_up_logs() {
  local f
  for f in node.log node.out netdelay-rA.log netdelay-rB.log; do
    [[ -s $LAB_DIR/$f ]] && tail_file "$f" "$LAB_DIR/$f"
  done
  return 0
}

cmd_up() {
  local mode=cone public=0 arg
  LAB_LOSS=0 LAB_DELAY=0 LAB_RELAY=0 LAB_NODE=1
  while (($# > 0)); do
    arg=$1
    shift
    case $arg in
    cone | symmetric) mode=$arg ;;
    --public-a) public=1 ;;
    --relay) LAB_RELAY=1 ;;
    --no-node) LAB_NODE=0 ;;
    --loss | --delay)
      if (($# == 0)) || ! [[ $1 =~ ^[0-9]{1,4}$ ]]; then die "$arg needs a whole number"; fi
      if [[ $arg == --loss ]]; then LAB_LOSS=$((10#$1)); else LAB_DELAY=$((10#$1)); fi
      shift
      ;;
    *)
      scenario_spec "$arg" || die "up: unknown mode or option '$arg' (modes: cone, symmetric, or a scenario name: ${SCENARIOS[*]})"
      mode=$LAB_B
      [[ $LAB_A == public ]] && public=1
      ;;
    esac
  done
  ((LAB_LOSS <= 100)) || die "--loss is a percentage (0..100)"
  LAB_B=$mode
  LAB_A=$mode
  ((public)) && LAB_A=public
  need_root_tools
  ((LAB_DELAY == 0)) || need_root_tools iptables
  take_lock
  refuse_if_lab_up
  check_lab_net
  ((LAB_NODE == 0)) || resolve_bin
  find_netdelay
  LAB_DIR="$STATE/lab"
  trap up_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  step "building the lab ($LAB_A / $LAB_B, loss ${LAB_LOSS}%, delay ${LAB_DELAY} ms, relay $LAB_RELAY)"
  lab_up
  trap - EXIT INT TERM
  printf '\nNAT lab %s up (%s); files in %s\n\n' "$LAB_ID" "$(<"$LAB_DIR/lab.mode")" "$LAB_DIR"
  printf '  %-6s %-14s %s\n' who namespace address
  printf '  %-6s %-14s %s\n' inet "$(ns inet)" "$(ip -n "$(ns inet)" -4 -o addr show scope global | awk '{printf "%s ", $4}')"
  if ((LAB_NODE)); then
    printf '  %-6s %-14s %s\n' node "$(ns node)" "$NODE_IP (kadrtc node: tcp $NODE_TCP_PORT, stun ${NODE_STUN:--}, relay ${NODE_RELAY:--})"
  else
    printf '  %-6s %-14s %s\n' node "$(ns node)" "$NODE_IP (no kadrtc node)"
  fi
  if [[ $LAB_A != public ]]; then
    printf '  %-6s %-14s %s\n' rA "$(ns rA)" "WAN $RA_WAN_IP, LAN $RA_LAN_IP ($LAB_A NAT)"
  fi
  printf '  %-6s %-14s %s\n' A "$(ns A)" "$A_IP"
  printf '  %-6s %-14s %s\n' rB "$(ns rB)" "WAN $RB_WAN_IP, LAN $RB_LAN_IP ($LAB_B NAT)"
  printf '  %-6s %-14s %s\n' B "$(ns B)" "$B_IP"
  if ((LAB_NODE)); then
    printf '\nnode %s, bootstrap address:\n  %s\n' "$NODE_PEER" "$BOOT_ADDR"
    printf '\njoin from each peer, e.g.:\n'
    printf '  %s exec A %q join myroom --listen /ip4/%s/tcp/0 --bootstrap %s\n' "$PROG" "$BIN" "$A_IP" "$BOOT_ADDR"
    printf '  %s exec B %q join myroom --listen /ip4/%s/tcp/0 --bootstrap %s\n' "$PROG" "$BIN" "$B_IP" "$BOOT_ADDR"
  fi
  printf '\nshell in a namespace: %s shell WHO; remove the lab: %s down\n' "$PROG" "$PROG"
}

cmd_down() {
  (($# == 0)) || die "usage: $PROG down"
  need_root_tools
  lab_namespaces
  if ((${#FOUND_NS[@]} == 0)); then
    note "no NAT lab namespaces found"
    return 0
  fi
  step "removing ${FOUND_NS[*]} (and every process inside them)"
  destroy_namespaces "${FOUND_NS[@]}"
  lab_namespaces
  ((${#FOUND_NS[@]} == 0)) || die "namespaces left behind: ${FOUND_NS[*]}"
  note "NAT lab removed"
}

cmd_status() {
  (($# == 0)) || die "usage: $PROG status"
  need_root_tools
  lab_namespaces
  if ((${#FOUND_NS[@]} == 0)); then
    note "no NAT lab up"
    return 1
  fi
  local name p cmdline
  [[ -f $STATE/lab/lab.mode ]] && note "lab of 'up': $(<"$STATE/lab/lab.mode") (files in $STATE/lab)"
  for name in "${FOUND_NS[@]}"; do
    printf '%-14s %s\n' "$name" "$(ip -n "$name" -4 -o addr show scope global | awk '{printf "%s ", $4}')"
    while read -r p; do
      [[ $p =~ ^[0-9]+$ ]] || continue
      cmdline=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
      printf '    pid %-8s %s\n' "$p" "${cmdline:0:120}"
    done < <(ip netns pids "$name" 2>/dev/null)
  done
}

# find_role WHO -> the namespace of the running lab.
find_role() {
  local who=$1 name
  [[ $who =~ ^(inet|node|rA|rB|A|B)$ ]] || die "WHO must be one of: inet node rA rB A B"
  lab_namespaces
  for name in "${FOUND_NS[@]}"; do
    if [[ $name == *-"$who" ]]; then
      printf '%s' "$name"
      return 0
    fi
  done
  die "no '$who' namespace: is a lab up? ($PROG up)"
}

cmd_shell() {
  (($# == 1)) || die "usage: $PROG shell WHO  (WHO: inet node rA rB A B)"
  need_root_tools
  local name
  name=$(find_role "$1")
  note "shell in $name (exit to leave)"
  exec ip netns exec "$name" env PS1="[$1 \\w]# " bash --norc -i
}

cmd_exec() {
  (($# >= 2)) || die "usage: $PROG exec WHO CMD [ARGS...]"
  need_root_tools
  local name
  name=$(find_role "$1")
  shift
  exec ip netns exec "$name" "$@"
}

# --- help / dispatch -------------------------------------------------------------------

usage() {
  cat <<EOF
usage: $PROG <command> [args]      (as root)

An emulated internet in network namespaces (all addresses in $LAB_NET):

  peer A $A_LAN_IP --- router A (WAN $RA_WAN_IP) ---+
                                                    +--- internet ---+--- public node $NODE_IP
  peer B $B_LAN_IP --- router B (WAN $RB_WAN_IP) ---+   (routing)    +--- peer A $PUB_A_IP (--public-a)

The routers NAT with nftables (cone: masquerade; symmetric: masquerade
fully-random) and drop unsolicited inbound packets on their WAN side.

commands:
  scenarios [--runs N]      run every scenario N times (default $DEFAULT_RUNS, 1..$MAX_RUNS), each run
                            in a fresh lab and a fresh room; print a table, write
                            <state dir>/results.json; exit 1 if any scenario fails
  scenario NAME [--runs N]  the same for one scenario
  selftest                  check the lab without kadrtc: pings through the NATs, the
                            conntrack mappings (cone: same port for every destination;
                            symmetric: a new port per destination), unsolicited inbound
                            dropped, and (if kadrtc-netdelay is built) loss and delay
  up [MODE] [options]       build a lab and leave it running for manual play.
                            MODE: cone (default), symmetric, or a scenario name.
                            options: --public-a (peer A on the internet, no NAT),
                            --loss P (% per router and direction), --delay MS (per
                            router and direction), --relay (node with --relay),
                            --no-node (no kadrtc node)
  status                    show the lab's namespaces, addresses and processes
  shell WHO                 a shell in a lab namespace (WHO: inet node rA rB A B)
  exec WHO CMD [ARGS...]    run a command in a lab namespace
  down, clean               kill every process inside the lab namespaces, then
                            delete every namespace named kn<hex4>-<role> (also the
                            leftovers of a crashed run)
  help                      show this help

scenarios (peer A | peer B | node | passes when):
  cone               cone NAT | cone NAT | STUN | both report channel_open, no relay in the pair
  public-cone        no NAT | cone NAT | STUN | both report channel_open, no relay in the pair
  symmetric-relay    symmetric | symmetric | STUN + --relay | both open, the pair includes relay
  symmetric-norelay  symmetric | symmetric | STUN | no channel_open, and an error of
                     kind no_path from either joiner within ${NOPATH_DEADLINE_S} s
  lossy-cone         cone, 5% loss + 30 ms delay per router and direction (both routers)
                     | same | STUN | both open, no relay in the pair
  cut-cone           cone | cone | STUN | both open; then router A's internet link is cut
                     for 10 s: both report peer_left, and both open again by themselves
                     within 60 s of the restored link
  Deadline: ${OPEN_DEADLINE_S} s from starting the joiners (${NOPATH_DEADLINE_S} s for symmetric-norelay).
  A scenario passes when all of its runs pass.

state dir: $STATE
environment:
  KADRTC_NAT_DIR       state directory (default: \$KADRTC_TESTNET_DIR/nat, i.e. testnet/.run/nat)
  KADRTC_BIN           kadrtc binary (default: build with cargo build --release -p
                       kadrtc-node --bin kadrtc and use target/release/kadrtc; scenarios
                       do not build when this is set; up never builds)
  KADRTC_NETDELAY_BIN  kadrtc-netdelay binary for the delay (default:
                       target/release/kadrtc-netdelay, then target/debug/kadrtc-netdelay)
  NAT_JOIN_ARGS        extra arguments for every 'kadrtc join' of the scenarios, split on
                       spaces (for debugging, e.g. "--stun stun:$NODE_IP:$NODE_STUN_PORT")
  CARGO_TARGET_DIR     cargo target directory (default: target)
  RUST_LOG             passed to the nodes and joiners (their stderr goes to the .log files)
needs: root, iproute2, nftables, iptables (delay only), procps (sysctl), python3
  (apt-get install nftables iptables iproute2 procps python3)
EOF
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  scenarios) cmd_scenarios "$@" ;;
  scenario) cmd_scenario "$@" ;;
  selftest) cmd_selftest "$@" ;;
  up) cmd_up "$@" ;;
  down | clean) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  shell) cmd_shell "$@" ;;
  exec) cmd_exec "$@" ;;
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

# bash reads a script while it runs it: with the exit on the same line, an edit
# of this file during a run cannot be read as more commands after main returns.
main "$@" && exit 0 || exit
