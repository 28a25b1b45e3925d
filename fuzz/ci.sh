#!/usr/bin/env bash
# Short fuzzing run for CI: every cargo-fuzz target for FUZZ_SECONDS (default 20) seconds,
# starting from the committed corpus in fuzz/corpus/<target>. Fails when a target crashes,
# hangs or runs out of memory; the input is then in fuzz/artifacts/<target>/.
#
# New corpus entries go to a temporary directory: the committed corpus is only read. To grow
# it, fuzz locally and minimise (fuzz/README.md).
#
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept the nightly-only flags cargo-fuzz passes
# (-Zsanitizer=address and friends); see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
started=$SECONDS

# Runs a command, prints how long it took and returns its status.
timed() {
    local label=$1 start=$SECONDS status=0
    shift
    echo "==> fuzz: $label"
    "$@" || status=$?
    echo "    $label took $((SECONDS - start)) s"
    return "$status"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    timed "install cargo-fuzz" cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# The equivalent of --locked, which cargo fuzz does not take: fail when fuzz/Cargo.lock is
# out of date instead of resolving new versions in CI.
if ! cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
    echo "fuzz/Cargo.lock is out of date: run 'cargo update --workspace --manifest-path fuzz/Cargo.toml' and commit it" >&2
    exit 1
fi

mapfile -t targets < <(cargo fuzz list)
echo "targets: ${targets[*]}"

# One build of every target (release, debug assertions, AddressSanitizer); the runs reuse it.
timed "build" env RUSTC_BOOTSTRAP=1 cargo fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=("$scratch/$target")
    mkdir -p "${corpus[0]}"
    if [[ -d fuzz/corpus/$target ]]; then
        corpus+=("fuzz/corpus/$target")
    fi
    # libFuzzer writes new inputs to the first corpus directory only. -timeout turns an input
    # that runs for more than 30 s into a failure (a remote could stall us with it).
    if ! timed "run $target for ${seconds} s" env RUSTC_BOOTSTRAP=1 \
        cargo fuzz run "$target" "${corpus[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 \
        2>&1 | tee "$scratch/$target.log"; then
        failed+=("$target")
    fi
    summary+=("$target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$target.log" || echo "no DONE line")")
done

echo "==> fuzz: whole run took $((SECONDS - started)) s"
printf '    %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzz targets failed: ${failed[*]}; inputs in fuzz/artifacts/" >&2
    ls -l fuzz/artifacts/* >&2 || true
    exit 1
fi
