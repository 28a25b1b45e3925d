# testnet/lib.sh: helpers shared by testnet.sh and nat.sh (sourced, not run). They read the
# caller's PROG and LOG_TAIL_LINES, and set DIE_MSG and NOW_MS for it.
# shellcheck shell=bash

die() {
  # shellcheck disable=SC2034 # read by the callers' exit traps
  DIE_MSG="$*"
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# now_ms: current wall-clock time in milliseconds, stored in NOW_MS
# (no subshell/fork on bash >= 5 thanks to EPOCHREALTIME).
NOW_MS=0
now_ms() {
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    local t=${EPOCHREALTIME/[.,]/}
    NOW_MS=$((10#$t / 1000))
  else
    NOW_MS=$(date +%s%3N)
  fi
}

# tail_file TITLE FILE: print the last LOG_TAIL_LINES lines of FILE, framed.
tail_file() {
  printf -- '--- %s (%s), last %d lines ---\n' "$1" "$2" "$LOG_TAIL_LINES"
  if [[ -s $2 ]]; then
    tail -n "$LOG_TAIL_LINES" -- "$2"
  else
    printf '(empty or missing)\n'
  fi
}

# stamp_lines: copy stdin to stdout, prefixing each line with epoch ms.
stamp_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    now_ms
    printf '%s %s\n' "$NOW_MS" "$line"
  done
}

# close_stdins: close our ends of the joiners' stdin fifos (= EOF for them).
close_stdins() {
  if [[ -n $A_FD ]]; then exec {A_FD}>&-; fi
  if [[ -n $B_FD ]]; then exec {B_FD}>&-; fi
  A_FD=""
  B_FD=""
}

# has_event FILE EVENT: the joiner output FILE contains an EVENT line.
has_event() {
  grep -qE "\"event\"[[:space:]]*:[[:space:]]*\"$2\"" "$1" 2>/dev/null
}
