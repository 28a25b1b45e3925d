#!/usr/bin/env bash
# Interop check of copy-paste signaling (`kadrtc offer` / `kadrtc answer`) against aiortc, a
# WebRTC implementation in Python that shares no code with webrtc-rs: aiortc answers a
# `kadrtc offer`, and `kadrtc answer` answers aiortc's offer; each exchanges one message each
# way. Everything runs on 127.0.0.1 (see aiortc_peer.py).
#
#   testnet/interop/run.sh
#
# Environment: KADRTC_BIN (default target/debug/kadrtc), INTEROP_VENV (default
# target/interop-venv: made on first use, with the pinned requirements.txt from PyPI).
# Prints PASS or FAIL per role, then "interop: N passed, N failed"; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

here=testnet/interop
kadrtc=${KADRTC_BIN:-target/debug/kadrtc}
venv=${INTEROP_VENV:-target/interop-venv}
logs=target/interop-logs
# Seconds one role may take, on top of the script's own deadline (a hung process).
role_timeout=120

if [[ ! -x $kadrtc ]]; then
    echo "FAIL: no kadrtc binary at $kadrtc (run cargo build -p kadrtc-node, or set KADRTC_BIN)"
    exit 1
fi

# (Re)install when the venv is missing or was made from other requirements.
if ! cmp -s "$here/requirements.txt" "$venv/kadrtc-requirements.txt"; then
    echo "==> interop: installing aiortc into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    started=$SECONDS
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        --requirement "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/kadrtc-requirements.txt"
    echo "==> interop: pip install took $((SECONDS - started)) s"
fi
aiortc_version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("aiortc"))')
echo "==> interop: aiortc $aiortc_version against $kadrtc"

mkdir -p "$logs"
passed=0
failed=0
# role: what aiortc plays; kadrtc plays the other one.
for role in answer offer; do
    case $role in
        answer) what="aiortc answers kadrtc offer" ;;
        offer) what="kadrtc answer answers aiortc's offer" ;;
    esac
    log=$logs/aiortc-$role.log
    started=$SECONDS
    if RUST_LOG=${RUST_LOG:-warn} timeout "$role_timeout" \
        "$venv/bin/python" "$here/aiortc_peer.py" "$role" "$kadrtc" >"$log" 2>&1; then
        echo "PASS: $what ($((SECONDS - started)) s)"
        passed=$((passed + 1))
    else
        echo "FAIL: $what (exit $?); its log, $log:"
        sed 's/^/    /' "$log"
        failed=$((failed + 1))
    fi
done
echo "interop: $passed passed, $failed failed"
((failed == 0))
