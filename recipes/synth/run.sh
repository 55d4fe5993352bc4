#!/usr/bin/env bash
# The default asrkd recipe: synthesize a corpus with espeak-ng, build GMM-HMM targets, train a
# ten-model DNN ensemble, distill it into one model and a small student (on the training set and
# an unlabeled transfer set), and write the Table-1 style report to exp/results.md. Runs on a
# 2-core CPU machine in 14-17 minutes by the hour (13.8 measured with `make demo`; see the README).
#
# Usage: recipes/synth/run.sh [--stage N] [--stop-stage N] [--nj N] [--hours H] ...
# You can safely remove corpus/ data/ exp/ and rerun; finished stages are skipped.
set -euo pipefail
start_dir=$PWD
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
. ../lib.sh
. ./cmd.sh

stage=0
stop_stage=100
force=false
nj=2                   # parallel jobs (processes)
hours=0.5              # training audio; dev and test are sized in proportion (10% each)
num_speakers=40        # training speakers (dev and test get 8 unseen speakers each by default)
dev_speakers=0         # dev speakers, on whom the acoustic scales are chosen (0: 30% of the training
                       # speakers, 12 of 40: the corpus's default 8 and 4 more)
transfer_hours=0.5     # unlabeled audio (further speakers) the students are also distilled on
test_speakers=32       # test speakers (as much audio each as a dev speaker): frame accuracy on all
wer_speakers=0         # > 0: only the first N test speakers are decoded for WER (0: all of them)
wer_singles=3          # single models decoded for WER (dev and test): the first N (0: all); every
                       # one is measured in frame accuracy (a forward pass: decoding is the cost)
condition=other        # clean | other (reverberation + noise)
snr=10,30              # other: SNR range (dB), drawn per utterance
rt60=0.1,0.5           # other: reverberation time range (s), drawn per utterance
accents=en-us,en-US-nyc,en,en-GB-x-rp  # espeak-ng accents (all: the eight English ones)
seed=0                 # the corpus draw and every model initialisation derive from it
vocab_size=3000        # LM-text words added to the vocabulary (most frequent first)
lm_prune=1e-6          # entropy-pruning threshold of the estimated LM (0: none): 1e-6 halves HCLG
                       # (129 -> 73 MB) and its build time, search 14% faster; one model's test WER +0.0-1.1
arpa=                  # an ARPA LM (plain or .gz) to use instead of estimating one
mono_fraction=0.3      # share of training speakers the monophone system is trained on
mono_iters=20
mono_gauss=1000
tri_iters=20
tri_leaves=500         # tied triphone states = DNN targets (the paper: ~14k)
tri_gauss=4000
dnn_conf=dnn.yaml      # teachers and the same-size student
student_conf=student_same.yaml   # the same-size distilled student
small_conf=student_small.yaml
num_models=10          # ensemble size (the paper: 10)
temperature=1          # distillation temperature
alpha=0.5              # weight of the soft-target loss (the paper: hard weight 0.5)
topk=50                # soft targets stored per frame (top-k of the ensemble's distribution)
specialists=0          # > 0: stage 15 trains that many specialists on the distilled model
temperatures=          # stage 16 (off when empty): a student at each T, e.g. "1 2 5 10"
study_topk=0           # stage 16: soft targets kept per frame (0: all, dense: T not confounded with lost mass)
small_fraction=0       # stage 17 (off when 0): hard vs soft targets on this share of train (0.03)
small_data_conf=dnn_small_data.yaml  # stage 17's model and schedule (hard and soft alike)
student_seeds=1        # stage 18 (off when 1): the students and controls from N initialisations
beam=11
max_active=2000       # chosen on seed 0's dev set: 1000 lost 3 WER points to search errors
gmm_acwt_grid=0.05,0.067,0.1
dnn_acwt_grid=0.06,0.07,0.08,0.09,0.1,0.115,0.13,0.15,0.175  # steps of 11-17% (Kaldi's LMWT 7-17 sweep: 7-14%);
                       # searched at its middle (0.1), it and 4 steps past each edge scored: 0.032-0.32
priors=posterior       # DNN decoding divides by: counts (alignment) | posterior (adjust-priors)
acwt_choice=system     # DNN scales: system (each its own dev optimum) | shared (one, pooled dev errors)
conf=../../conf
corpus=corpus
data=data
exp=exp

usage() {
  sed -n 2,8p "$here/run.sh" | sed 's/^# \{0,1\}//'
  echo "Options (default):"
  for v in stage stop_stage force nj hours num_speakers dev_speakers transfer_hours test_speakers wer_speakers wer_singles condition snr rt60 accents seed \
           vocab_size lm_prune arpa mono_fraction mono_iters \
           mono_gauss tri_iters tri_leaves tri_gauss dnn_conf student_conf small_conf num_models temperature \
           alpha topk specialists temperatures study_topk small_fraction small_data_conf student_seeds beam max_active \
           gmm_acwt_grid dnn_acwt_grid priors acwt_choice; do
    printf '  --%-14s %s\n' "${v//_/-}" "${!v}"
  done
}
parse_options "$@"
lock_exp  # makes $exp; one recipe at a time on it
[ "$dev_speakers" -gt 0 ] || dev_speakers=$(( (3 * num_speakers + 5) / 10 > 2 ? (3 * num_speakers + 5) / 10 : 2 ))
train=train dev=dev tests=test
transfer=; [ "$transfer_hours" = 0 ] || transfer=unlabeled   # the corpus's unlabeled/ subset
lm_text=$corpus/train-text.txt   # LM text from the training books only (never test text)
lm_opts=                         # plain sentences, no utterance ids
[ "$lm_prune" = 0 ] || lm_opts="--prune $lm_prune"
arpa=$(abs_path "$arpa")
lexicon=

if stage 0 "synthesize the corpus ($hours h train + $transfer_hours h unlabeled, condition $condition)"; then
  accent_opt=; [ "$accents" = all ] || accent_opt="--accents $accents"
  $asrkd_cmd asrkd synth-corpus --hours $hours --num-speakers $num_speakers --condition $condition \
    --snr $snr --rt60 $rt60 $accent_opt \
    --unlabeled-hours $transfer_hours --test-speakers $test_speakers --dev-speakers $dev_speakers --seed $seed --nj $nj $corpus
  stage_done 0
fi

if stage 1 "data preparation: Kaldi data dirs"; then
  for s in $train $dev $tests $transfer; do
    asrkd prepare-data $corpus/$s $data/$s
  done
  stage_done 1
fi

. ../stages.sh
