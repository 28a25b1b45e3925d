# testnet/lib.sh: helpers shared by testnet.sh, nat.sh and lan.sh (sourced, not run). They
# read the caller's PROG, LOG_TAIL_LINES, POLL_INTERVAL and STOP_TIMEOUT_S, and set DIE_MSG,
# NOW_MS and LEFT for it.
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

# pid_alive PID: PID is a live process (not a zombie).
pid_alive() {
  local stat
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat=${stat##*) } # drop "pid (comm) " — comm may contain spaces
  [[ ${stat:0:1} != Z ]]
}

# wait_gone SECONDS PID...: poll until every PID is gone (0), or SECONDS pass
# (1, survivors in LEFT).
LEFT=()
wait_gone() {
  local secs=$1 pid deadline
  shift
  now_ms
  deadline=$((NOW_MS + secs * 1000))
  while :; do
    LEFT=()
    for pid; do
      if pid_alive "$pid"; then LEFT+=("$pid"); fi
    done
    ((${#LEFT[@]} > 0)) || return 0
    now_ms
    ((NOW_MS < deadline)) || return 1
    sleep "$POLL_INTERVAL"
  done
}

# kill_all PID...: SIGTERM every live PID, wait up to STOP_TIMEOUT_S, then
# SIGKILL the survivors (and wait up to 2 s for them).
kill_all() {
  local pid targets=()
  for pid in "$@"; do
    if pid_alive "$pid" && kill -TERM "$pid" 2>/dev/null; then targets+=("$pid"); fi
  done
  ((${#targets[@]} > 0)) || return 0
  wait_gone "$STOP_TIMEOUT_S" "${targets[@]}" && return 0
  printf '%s: note: %d process(es) ignored SIGTERM for %d s, sending SIGKILL\n' "$PROG" "${#LEFT[@]}" "$STOP_TIMEOUT_S" >&2
  kill -KILL "${LEFT[@]}" 2>/dev/null || true
  wait_gone 2 "${LEFT[@]}" || true
}
