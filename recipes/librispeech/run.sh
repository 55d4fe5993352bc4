#!/usr/bin/env bash
# asrkd on LibriSpeech (or any corpus in its layout): GMM-HMM targets, a DNN ensemble,
# distillation and the Table-1 style report in exp/results.md.
#
# Full LibriSpeech (defaults; model sizes in conf/ for a GPU machine):
#   recipes/librispeech/run.sh --corpus /data/LibriSpeech --lm-text /data/librispeech-lm-norm.txt
# With LibriSpeech's own LM and lexicon (from openslr.org/11):
#   recipes/librispeech/run.sh --corpus /data/LibriSpeech --arpa 3-gram.pruned.1e-7.arpa.gz \
#     --lexicon librispeech-lexicon.txt --lm-text librispeech-vocab.txt --lm-utt-ids false
# A corpus without dev/test sets, e.g. a slice of train-clean-100: split its speakers instead:
#   recipes/librispeech/run.sh --corpus DIR --train-sets train-clean-100 --dev-sets "" \
#     --test-sets "" --dev-speakers 25 --lm-text train-clean-100.text
# ... and a clean test set of 20 further speakers (their chapters left out of the LM text):
#     ... --test-speakers 20
# You can safely remove data/ exp/ and rerun; finished stages are skipped.
set -euo pipefail
start_dir=$PWD
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ../lib.sh
. ./cmd.sh

stage=1
stop_stage=100
force=false
nj=2
seed=0                        # model initialisations derive from it (teachers seed*N+1 ..)
corpus=                       # a LibriSpeech root (holding train-clean-100/, dev-clean/, ...)
train_sets=train-clean-100    # space-separated subsets, combined into data/train
dev_sets=dev-clean            # combined into data/dev; empty: split --dev-speakers off train
test_sets="test-clean test-other"
dev_speakers=0                # with empty --dev-sets: speakers moved from train to dev
test_speakers=0               # with empty --test-sets: speakers moved from train to a clean test
                              # set, data/test; every LM-text line of their chapters (and of
                              # their sentences) is removed (needs --lm-utt-ids true)
wer_speakers=0                # >0: decode only the first N speakers of each test set for WER
wer_singles=0                 # >0: decode only the first N single models for WER (0: all)
                              # (frame accuracy, a forward pass, is measured on all of them)
transfer_sets=                # subsets used without transcripts as the students' transfer set
                              # (e.g. train-other-500), combined into data/unlabeled
lm_text=                      # LM training text (one sentence per line, an utterance id first is
                              # stripped); never the test transcripts
lm_utt_ids=true               # the LM text starts each line with an utterance id
lm_prune=0                    # entropy-pruning threshold of the estimated LM (e.g. 1e-7; 0: none)
arpa=                         # an ARPA LM to use instead of estimating one (plain or .gz, e.g.
                              # 3-gram.pruned.1e-7.arpa.gz); --lm-text then only adds vocabulary
vocab_size=                   # LM-text words added to the vocabulary (empty: all)
lexicon=                      # optional lexicon file (WORD PH1 PH2 ...); default CMUdict
mono_fraction=0.3             # share of training speakers for the monophone system
mono_iters=40
mono_gauss=2000
tri_iters=35
tri_leaves=2500               # tied triphone states = DNN targets (the paper: ~14k)
tri_gauss=15000
dnn_conf=dnn_paper.yaml       # teachers / same-size student (the paper's 8 x 2560; GPU)
student_conf=dnn_paper.yaml    # the same-size distilled student
small_conf=student_small.yaml
num_models=10
temperature=1                 # distillation temperature
alpha=0.5
topk=50
specialists=0                 # > 0: stage 15 trains that many specialists (paper sec. 5)
temperatures=                 # stage 16 (off when empty): a student at each T, e.g. "1 2 5 10"
study_topk=0                  # stage 16: soft targets kept per frame (0: all, dense: T not confounded with lost mass)
small_fraction=0              # stage 17 (off when 0): hard vs soft targets on this share of
                              # the training utterances (the paper's table 5: 0.03)
small_data_conf=dnn_paper.yaml  # stage 17's model and schedule (hard and soft alike)
student_seeds=1               # stage 18 (off when 1): the students and controls from N initialisations
beam=13
max_active=7000
gmm_acwt_grid=0.067,0.083,0.1,0.125
dnn_acwt_grid=0.06,0.07,0.08,0.09,0.1,0.115,0.13,0.15,0.175  # steps of 11-17% (Kaldi's LMWT 7-17 sweep: 7-14%);
                               # searched at its middle (0.1), it and 4 steps past each edge scored: 0.032-0.32
priors=posterior              # DNN decoding divides by: counts (alignment) | posterior (adjust-priors)
acwt_choice=system     # DNN scales: system (each its own dev optimum) | shared (one, pooled dev errors)
conf=../../conf
data=data
exp=exp

usage() {
  sed -n 2,12p "$here/run.sh" | sed 's/^# \{0,1\}//'
  echo "Options (default):"
  for v in stage stop_stage force nj seed corpus train_sets dev_sets test_sets dev_speakers test_speakers wer_speakers wer_singles transfer_sets lm_text \
           lm_utt_ids lm_prune arpa vocab_size lexicon mono_fraction mono_iters mono_gauss tri_iters \
           tri_leaves tri_gauss dnn_conf student_conf small_conf num_models temperature alpha topk specialists \
           temperatures study_topk small_fraction small_data_conf student_seeds beam \
           max_active gmm_acwt_grid dnn_acwt_grid priors acwt_choice; do
    printf '  --%-14s %s\n' "${v//_/-}" "${!v}"
  done
}
parse_options "$@"
corpus=$(abs_path "$corpus") lm_text=$(abs_path "$lm_text") lexicon=$(abs_path "$lexicon")
arpa=$(abs_path "$arpa")
[ -n "$corpus" ] || { echo "$0: --corpus DIR is required (see --help)" >&2; exit 1; }
[ -d "$corpus" ] || { echo "$0: --corpus $corpus: no such directory" >&2; exit 1; }
[ -n "$lm_text$arpa" ] || { echo "$0: --lm-text FILE or --arpa FILE is required (never the test transcripts)" >&2; exit 1; }
[ -z "$lm_text" ] || [ -f "$lm_text" ] || { echo "$0: --lm-text $lm_text: no such file" >&2; exit 1; }
[ -z "$arpa" ] || [ -f "$arpa" ] || { echo "$0: --arpa $arpa: no such file" >&2; exit 1; }
lm_opts=; [ "$lm_utt_ids" = true ] && lm_opts=--utt-ids
[ "$lm_prune" = 0 ] || lm_opts="$lm_opts --prune $lm_prune"
if [ "$test_speakers" -gt 0 ]; then
  [ -z "$test_sets" ] || { echo "$0: --test-speakers N needs --test-sets \"\"" >&2; exit 1; }
fi
lock_exp  # makes $exp; one recipe at a time on it
train=train dev=dev
transfer=; [ -z "$transfer_sets" ] || transfer=unlabeled
tests=""
for t in $test_sets; do tests="$tests ${t//-/_}"; done
# No test set (e.g. a slice of train-clean-100 split into train and dev): report on dev, whose
# acoustic scale is then tuned on the same data (the report says which sets were used).
[ "$test_speakers" -eq 0 ] || tests=test
if [ -z "$tests" ]; then
  tests=$dev
  log "warning: no test set: the report's 'test' figures are dev's, whose acoustic scale was" \
    "tuned on the same data (optimistic WER); use --test-speakers N for a clean test"
fi
# Speakers split off the training set (dev and held-out test) leave the LM text as well; that
# needs the LM text's utterance ids (SPK-CHAPTER-UTT).
held_out=
[ "$test_speakers" -eq 0 ] || held_out="$data/test"
[ -n "$dev_sets" ] || held_out="$data/$dev $held_out"
if [ -n "$held_out" ] && [ -n "$lm_text" ] && [ "$lm_utt_ids" != true ]; then
  echo "$0: dev or test speakers split off the training set need an LM text with utterance" \
    "ids (--lm-utt-ids true) to keep their sentences out of the LM" >&2
  exit 1
fi

if stage 1 "data preparation: Kaldi data dirs"; then
  # prepare_sets OUT SUBSET...: prepare each LibriSpeech subset, then merge them into OUT
  prepare_sets() {
    local out=$1 parts="" s; shift
    for s in "$@"; do
      asrkd prepare-data $corpus/$s $data/${s//-/_}
      parts="$parts $data/${s//-/_}"
    done
    asrkd combine-data-dirs $out $parts
  }
  # with held-out test speakers, the training set is what is left after they are split off
  rest=$data/$train; [ "$test_speakers" -eq 0 ] || rest=$data/${train}_with_test
  if [ -n "$dev_sets" ]; then
    prepare_sets $rest $train_sets
    prepare_sets $data/$dev $dev_sets
  else
    [ "$dev_speakers" -gt 0 ] || { echo "$0: empty --dev-sets needs --dev-speakers N" >&2; exit 1; }
    prepare_sets $data/${train}_all $train_sets
    asrkd subset-data-dir --num-speakers $dev_speakers $data/${train}_all $data/$dev $rest
  fi
  if [ "$test_speakers" -gt 0 ]; then
    asrkd subset-data-dir --num-speakers $test_speakers $rest $data/test $data/$train
  fi
  if [ -n "$held_out" ]; then
    # no test or dev sentence, nor any other sentence of their chapters, informs the LM (or the
    # vocab): the acoustic scale is tuned on dev, so dev must be as unseen as test
    asrkd filter-lm-text $lm_text $data/lm_text_heldout.txt --held-out $held_out
  fi
  for t in $test_sets; do asrkd prepare-data $corpus/$t $data/${t//-/_}; done
  [ -z "$transfer" ] || prepare_sets $data/$transfer $transfer_sets
  stage_done 1
fi

[ -z "$held_out" ] || lm_text=$data/lm_text_heldout.txt
. ../stages.sh
