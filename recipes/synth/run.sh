#!/usr/bin/env bash
# The default asrkd recipe: synthesize a corpus with espeak-ng, build GMM-HMM targets, train a
# ten-model DNN ensemble, distill it into one model and a small student, and write the Table-1
# style report to exp/results.md. Runs on a 2-core CPU machine in about 15 minutes.
#
# Usage: recipes/synth/run.sh [--stage N] [--stop-stage N] [--nj N] [--hours H] ...
# You can safely remove corpus/ data/ exp/ and rerun; finished stages are skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ../lib.sh
. ./cmd.sh

stage=0
stop_stage=100
force=false
nj=2                   # parallel jobs (processes)
hours=1.0              # training audio; dev and test are sized in proportion
condition=other        # clean | other (reverberation + noise)
seed=0
num_models=10          # ensemble size (the paper: 10)
temperature=2          # distillation temperature
alpha=0.5              # weight of the soft-target loss (the paper: hard weight 0.5)
mono_gauss=1000
tri_leaves=1000
tri_gauss=4000
conf=../../conf
corpus=corpus
data=data
exp=exp

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  echo "Options (default):"
  for v in stage stop_stage force nj hours condition seed num_models temperature alpha \
           mono_gauss tri_leaves tri_gauss; do
    printf '  --%-14s %s\n' "${v//_/-}" "${!v}"
  done
}
parse_options "$@"
mkdir -p "$exp"
train=train dev=dev tests=test
lm_text=$corpus/train-text.txt   # LM text from the training books only (never test text)
lexicon=

if stage 0 "synthesize the corpus ($hours h train, condition $condition)"; then
  $asrkd_cmd asrkd synth-corpus --hours $hours --condition $condition --seed $seed --nj $nj $corpus
  stage_done 0
fi

if stage 1 "data preparation: Kaldi data dirs"; then
  for s in $train $dev $tests; do
    asrkd prepare-data $corpus/$s $data/$s
  done
  stage_done 1
fi

. ../stages.sh
