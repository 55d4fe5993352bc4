#!/usr/bin/env bash
# Stand up a real one-node Slurm cluster (Debian's slurm-wlm and munge) in a temp dir, run the
# recipe's ensemble stage (stage 10) through it as a job array, and tear the cluster down.
#
# Usage (as root, on Debian/Ubuntu): scripts/slurm_one_node.sh --data DIR --ali-dir DIR
#   [--num-models 4] [--dnn-conf FILE] [--keep false]
# DATA is a prepared fbank data dir (e.g. recipes/synth/data/train after stage 2) and ALI_DIR
# its alignment (e.g. recipes/synth/exp/tri_ali_train). The members land in TMP/exp/teachers,
# their logs in TMP/exp/teachers/log; the Slurm daemons' logs in TMP/slurm/log. The script
# corrupts member 2's first checkpoint before the first submission, so that run shows a failed
# task being reported; the second submission then resubmits member 2 alone. There is no
# slurmdbd here, so sacct fails and submitit says so ("Bypassing sacct error"): it then learns
# that a task ended from the task's result file (a task killed by Slurm would go unnoticed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
data= ali_dir= num_models=4 dnn_conf= keep=false
while [ $# -gt 0 ]; do
  case $1 in
    --data) data=$(realpath "$2"); shift 2 ;;
    --ali-dir) ali_dir=$(realpath "$2"); shift 2 ;;
    --num-models) num_models=$2; shift 2 ;;
    --dnn-conf) dnn_conf=$(realpath "$2"); shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown option $1" >&2; exit 1 ;;
  esac
done
[ -n "$data" ] && [ -n "$ali_dir" ] || { echo "$0: --data and --ali-dir are required" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "$0: installs packages and runs daemons: run as root" >&2; exit 1; }
command -v asrkd >/dev/null || { echo "$0: asrkd is not on PATH (e.g. PATH=\$PWD/.venv/bin:\$PATH)" >&2; exit 1; }

log() { echo "$(date '+%H:%M:%S') slurm_one_node: $*"; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

tmp=$(mktemp -d /tmp/asrkd-slurm.XXXXXX)
chmod 700 "$tmp"
s=$tmp/slurm
mkdir -p "$s/log" "$s/state" "$s/spool" "$tmp/munge"
host=$(hostname -s)
cpus=$(nproc)
port=$((20000 + RANDOM % 20000))

teardown() {
  log "tearing the cluster down"
  for p in "$s/slurmd.pid" "$s/slurmctld.pid" "$tmp/munge/munged.pid"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
  sleep 1
  if [ "$keep" = true ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap teardown EXIT

# munge: our own key, socket and pid file, so a system munged (if any) is left alone
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$tmp/munge/munge.key"
munged --force --key-file "$tmp/munge/munge.key" --socket "$tmp/munge/munge.socket" \
  --pid-file "$tmp/munge/munged.pid" --log-file "$tmp/munge/munged.log" \
  --seed-file "$tmp/munge/munged.seed"

cat > "$s/slurm.conf" <<CONF
ClusterName=asrkd
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$s/state
SlurmdSpoolDir=$s/spool
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
SlurmctldLogFile=$s/log/slurmctld.log
SlurmdLogFile=$s/log/slurmd.log
# a container has no cgroup hierarchy of its own to manage
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$s/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 1
done
log "cluster up: $(sinfo -h -o '%P %D %T %c' 2>&1)"

# the recipe's ensemble stage, its launcher switched to Slurm through cmd.sh's one line
mkdir -p "$tmp/exp" "$tmp/data"
ln -s "$ali_dir" "$tmp/exp/tri_ali_train"
ln -s "$data" "$tmp/data/train"
conf_opts=()
if [ -n "$dnn_conf" ]; then conf_opts=(--conf "$(dirname "$dnn_conf")" --dnn-conf "$(basename "$dnn_conf")"); fi
export ensemble_launcher="slurm:partition=debug,cpus_per_task=1,timeout_min=30"
n_run=0
run_stage() {
  n_run=$((n_run + 1))
  "$repo/recipes/synth/run.sh" --stage 10 --stop-stage 10 --force true --data "$tmp/data" \
    --exp "$tmp/exp" --num-models "$num_models" "${conf_opts[@]}" 2>&1 | tee "$tmp/stage10.$n_run.log"
}
mkdir -p "$tmp/exp/teachers/model2"
echo "not a checkpoint" > "$tmp/exp/teachers/model2/epoch1.pt"
log "submission 1 (member 2 is made to fail)"
if run_stage; then log "unexpected: submission 1 succeeded"; exit 1; fi
log "squeue/sinfo after submission 1: $(sinfo -h -o '%T' 2>&1)"
rm "$tmp/exp/teachers/model2/epoch1.pt"
log "submission 2 (member 2 fixed)"
run_stage
log "members: $(ls "$tmp"/exp/teachers/model*/final.pt | xargs -n1 dirname | xargs -n1 basename | xargs)"
log "Slurm job ids (from submitit's logs): $(ls "$tmp"/exp/teachers/log/submitit/*_submitted.pkl | xargs -n1 basename | sed 's/_submitted.pkl//' | xargs)"
grep -h "tasks submitted\|tasks failed\|already trained" "$tmp"/stage10.*.log || true
log "done"
