# Shared by recipes/*/run.sh: option parsing, logging, stage selection, done-markers, timings.
#
#   stage N "name" && { commands; stage_done N; }
#
# A stage runs when stage <= N <= stop_stage and its done-marker exp/.done/N is absent; its wall
# time is appended to exp/timings.tsv. Remove exp/.done/N (or use --force) to run it again.

# Every asrkd command of a recipe stops (SIGTERM, cleaning up) when the recipe's shell dies, so
# a killed recipe leaves no stage running on its own, writing into the logs of its rerun.
export ASRKD_DIE_WITH_PARENT=$$

# The same figures on every x86-64 machine: the BLAS (numpy's OpenBLAS, torch's MKL) and torch's
# own kernels are pinned to their AVX2 code paths. Left to choose, they pick kernels by the CPU
# (AVX2 or AVX-512, Intel or AMD); the float differences change the tree's splits and the
# mix-up, and with them every figure of the table (README: "Same numbers twice"). Measured on
# the demo's training step: no slower on an AVX-512 machine. numpy 2.x dispatches its own
# AVX-512 loops too (X86_V4, AVX512_ICL, AVX512_SPR: a monophone model's bytes differ with and
# without them on a Sapphire Rapids Xeon), and oneDNN picks its ISA: both are capped at AVX2 as
# well. On a machine without AVX-512 these settings change nothing and are silent.
# ASRKD_NATIVE_KERNELS=1 lets the libraries choose.
if [ "${ASRKD_NATIVE_KERNELS:-0}" != 1 ] && [ "$(uname -m)" = x86_64 ]; then
  export OPENBLAS_CORETYPE=Haswell MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2
  export NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" ONEDNN_MAX_CPU_ISA=AVX2
fi

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# parse_options "$@": every --foo-bar VALUE sets $foo_bar if that variable already exists.
parse_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --help|-h) usage; exit 0 ;;
      --*)
        local name=${1#--}; name=${name//-/_}
        if ! declare -p "$name" >/dev/null 2>&1; then
          echo "$0: unknown option $1 (see --help)" >&2; exit 1
        fi
        [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
        printf -v "$name" '%s' "$2"; shift 2 ;;
      *) echo "$0: unexpected argument $1 (see --help)" >&2; exit 1 ;;
    esac
  done
}

# lock_exp: make $exp and hold its lock (the file asrkd.lock writes: "pid host what") until the
# recipe exits. A second recipe on the same exp stops with one line naming the first; the lock
# of a recipe that is gone (its pid no longer runs on this host) is taken over with a note. The
# recipe's asrkd commands inherit it (ASRKD_LOCKS), so they may write into $exp itself.
lock_exp() {
  local i pid host here=${HOSTNAME:-$(uname -n)}
  mkdir -p "$exp"
  _exp_lock=$(cd "$exp" && pwd -P)/.asrkd.lock
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if (set -o noclobber; echo "$$ $here recipe $0" > "$_exp_lock") 2>/dev/null; then
      trap '_unlock_exp' EXIT
      export ASRKD_LOCKS="${_exp_lock%/*}${ASRKD_LOCKS:+:$ASRKD_LOCKS}"
      return 0
    fi
    pid= host=
    read -r pid host _ < "$_exp_lock" 2>/dev/null
    if [ -z "$pid" ]; then sleep 0.1; continue; fi  # being written (or just released)
    if [ "$host" != "$here" ] || [ -d "/proc/$pid" ] || kill -0 "$pid" 2>/dev/null; then
      echo "$0: error: $exp is in use by another run: pid $pid on $host; wait for it to end" \
        "or use another --exp (remove $_exp_lock only if that run is gone)" >&2
      exit 1
    fi
    echo "$0: note: $_exp_lock: taking over the lock of pid $pid on $host, which is no" \
      "longer running" >&2
    rm -f "$_exp_lock"
  done
  echo "$0: error: could not take the lock $_exp_lock" >&2
  exit 1
}
_unlock_exp() {
  local pid
  read -r pid _ < "$_exp_lock" 2>/dev/null
  [ "$pid" != $$ ] || rm -f "$_exp_lock"
}

_stage_start=0
# stage N NAME: true if stage N should run now (and starts its clock).
stage() {
  local n=$1 name=$2
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 1; fi
  if [ -f "$exp/.done/$n" ] && [ "$force" != true ]; then
    log "Stage $n: $name (done already, skipped)"
    return 1
  fi
  log "Stage $n: $name"
  _stage_name=$name
  _stage_start=$(date +%s.%N)
  return 0
}

# stage_done N: writes the done-marker and the stage's wall time.
stage_done() {
  local n=$1 secs
  secs=$(awk -v a="$_stage_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  mkdir -p "$exp/.done"
  touch "$exp/.done/$n"
  # one line per stage; a rerun of a stage replaces its line
  if [ -f "$exp/timings.tsv" ]; then
    awk -F'\t' -v s="$n" '$1 != s' "$exp/timings.tsv" > "$exp/timings.tsv.tmp"
    mv "$exp/timings.tsv.tmp" "$exp/timings.tsv"
  fi
  printf '%s\t%s\t%s\n' "$n" "$_stage_name" "$secs" >> "$exp/timings.tsv"
  log "Stage $n done in ${secs} s"
}

# abs_path P: P made absolute against the directory the recipe was started from ($start_dir).
abs_path() {
  case "$1" in
    /*|"") echo "$1" ;;
    *) echo "$start_dir/$1" ;;
  esac
}

# run_bg LOG CMD...: run CMD in the background with its output in LOG; `wait_bg` waits for all of
# them and fails (showing the log's tail) if any failed.
_bg_pids=() _bg_logs=()
run_bg() {
  local logf=$1; shift
  mkdir -p "$(dirname "$logf")"
  log "started in the background: $* (log: $logf)"
  "$@" > "$logf" 2>&1 &
  _bg_pids+=($!) _bg_logs+=("$logf")
}
wait_bg() {
  local i rc=0
  for i in "${!_bg_pids[@]}"; do
    if ! wait "${_bg_pids[$i]}"; then
      echo "failed; the end of ${_bg_logs[$i]}:" >&2
      tail -n 20 "${_bg_logs[$i]}" >&2
      rc=1
    fi
  done
  _bg_pids=() _bg_logs=()
  return $rc
}
