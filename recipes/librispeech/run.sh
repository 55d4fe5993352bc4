#!/usr/bin/env bash
# asrkd on LibriSpeech (or any corpus in its layout): GMM-HMM targets, a DNN ensemble,
# distillation and the Table-1 style report in exp/results.md.
#
# Full LibriSpeech (defaults; model sizes in conf/ for a GPU machine):
#   recipes/librispeech/run.sh --corpus /data/LibriSpeech --lm-text /data/librispeech-lm-norm.txt
# A corpus without dev/test sets, e.g. a slice of train-clean-100: split its speakers instead:
#   recipes/librispeech/run.sh --corpus DIR --train-sets train-clean-100 --dev-sets "" \
#     --test-sets "" --dev-speakers 25 --lm-text train-clean-100.text
# You can safely remove data/ exp/ and rerun; finished stages are skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ../lib.sh
. ./cmd.sh

stage=1
stop_stage=100
force=false
nj=2
corpus=                       # a LibriSpeech root (holding train-clean-100/, dev-clean/, ...)
train_sets=train-clean-100    # space-separated subsets, combined into data/train
dev_sets=dev-clean            # combined into data/dev; empty: split --dev-speakers off train
test_sets="test-clean test-other"
dev_speakers=0                # with empty --dev-sets: speakers moved from train to dev
lm_text=                      # LM training text (one sentence per line, an utterance id first is
                              # stripped); never the test transcripts
lexicon=                      # optional lexicon file (WORD PH1 PH2 ...); default CMUdict
num_models=10
temperature=2
alpha=0.5
mono_gauss=2000
tri_leaves=2500
tri_gauss=15000
dnn_conf=dnn_gpu.yaml         # teacher / same-size student config in conf/
conf=../../conf
data=data
exp=exp

usage() {
  sed -n 2,10p "$here/run.sh" | sed 's/^# \{0,1\}//'
  echo "Options (default):"
  for v in stage stop_stage force nj corpus train_sets dev_sets test_sets dev_speakers lm_text \
           lexicon num_models temperature alpha mono_gauss tri_leaves tri_gauss dnn_conf; do
    printf '  --%-14s %s\n' "${v//_/-}" "${!v}"
  done
}
parse_options "$@"
[ -n "$corpus" ] || { echo "$0: --corpus DIR is required (see --help)" >&2; exit 1; }
[ -d "$corpus" ] || { echo "$0: --corpus $corpus: no such directory" >&2; exit 1; }
mkdir -p "$exp"
train=train dev=dev
tests=""
for t in $test_sets; do tests="$tests ${t//-/_}"; done

if stage 1 "data preparation: Kaldi data dirs"; then
  parts=""
  for s in $train_sets; do
    asrkd prepare-data $corpus/$s $data/${s//-/_}; parts="$parts $data/${s//-/_}"
  done
  asrkd combine-data-dirs $data/$train $parts
  if [ -n "$dev_sets" ]; then
    parts=""
    for s in $dev_sets; do
      asrkd prepare-data $corpus/$s $data/${s//-/_}; parts="$parts $data/${s//-/_}"
    done
    asrkd combine-data-dirs $data/$dev $parts
  else
    [ "$dev_speakers" -gt 0 ] || { echo "$0: empty --dev-sets needs --dev-speakers N" >&2; exit 1; }
    mv $data/$train $data/${train}_all
    asrkd subset-data-dir --num-speakers $dev_speakers $data/${train}_all $data/$dev $data/$train
  fi
  for t in $test_sets; do asrkd prepare-data $corpus/$t $data/${t//-/_}; done
  stage_done 1
fi

. ../stages.sh
