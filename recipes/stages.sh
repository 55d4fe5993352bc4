# Stages 2 onwards, shared by recipes/*/run.sh (sourced after the recipe's own data stages).
# Expects: $data/$train, $data/$dev and $data/<each of $tests> prepared by stage 1; $lm_text,
# $lexicon (may be empty), $vocab_size, $nj, $conf, $exp and the model-size variables.
# Optional: $arpa, an ARPA LM (plain or .gz) used instead of estimating one from $lm_text.
# Optional: $transfer, a prepared data set without alignments (unlabeled audio) that the
# students are distilled on besides $train (the paper's transfer set; empty: $train only);
# $wer_speakers (> 0: only the first N speakers of each test set are decoded for WER, frame
# accuracy is measured on all of them: a forward pass is cheap, decoding is not); $wer_singles
# (> 0: only the first N single models are decoded, on dev and test, for WER; every one is
# measured in frame accuracy on the test sets).
# Optional studies after the report (off when empty / 0): $temperatures (stage 16, a student at
# each T), $small_fraction (stage 17, the paper's table 5: hard vs soft targets on that share of
# the training utterances).

seed=${seed:-0}   # the recipe's seed: model initialisations (and the synthetic corpus) derive from it
# each set once (a recipe with no test set evaluates on dev: tests=$dev)
all_sets=$(printf '%s\n' $train $dev $tests | awk '!seen[$0]++' | xargs)
eval_sets=$(printf '%s\n' $dev $tests | awk '!seen[$0]++' | xargs)
# Decoding: narrower than Kaldi's defaults (beam 13, max-active 7000) to keep the demo fast;
# the lattice beam bounds which paths the acoustic-scale grid (read off the lattices) can choose.
decode_opts="--nj $nj --beam $beam --max-active $max_active --lattice-beam 8"
# The students' data: $train, plus the transfer set when there is one.
transfer=${transfer:-}
kd_train=$train; [ -z "$transfer" ] || kd_train=${train}_${transfer}
wer_speakers=${wer_speakers:-0} wer_singles=${wer_singles:-0}
temperatures=${temperatures:-} small_fraction=${small_fraction:-0}
small_data_conf=${small_data_conf:-$dnn_conf}
# wer_set T: the data dir name decoded for WER on test set T (T itself, or its first speakers)
wer_set() { if [ "$wer_speakers" -gt 0 ] && [ "$1" != "$dev" ]; then echo ${1}_wer; else echo $1; fi; }

if stage 2 "features: fbank (DNN) and MFCC (GMM) + per-speaker CMVN"; then
  for s in $all_sets; do
    asrkd copy-data-dir $data/$s $data/${s}_mfcc
    $asrkd_cmd asrkd compute-feats --nj $nj --conf $conf/fbank.yaml $data/$s $data/fbank/$s
    $asrkd_cmd asrkd compute-feats --nj $nj --conf $conf/mfcc.yaml $data/${s}_mfcc $data/mfcc/$s
    asrkd compute-cmvn $data/$s
    asrkd compute-cmvn $data/${s}_mfcc
  done
  if [ -n "$transfer" ]; then  # fbank only: the transfer set feeds DNNs only
    $asrkd_cmd asrkd compute-feats --nj $nj --conf $conf/fbank.yaml $data/$transfer $data/fbank/$transfer
    asrkd compute-cmvn $data/$transfer
  fi
  for t in $tests; do  # the WER subsets carry their features and CMVN
    [ $(wer_set $t) != $t ] || continue
    asrkd subset-data-dir --num-speakers $wer_speakers $data/$t $data/${t}_wer $data/${t}_wer_rest
    asrkd subset-data-dir --num-speakers $wer_speakers $data/${t}_mfcc $data/${t}_wer_mfcc \
      $data/${t}_wer_rest_mfcc
  done
  stage_done 2
fi

if stage 3 "lang: lexicon, phones, topology, L.fst"; then
  asrkd prepare-lang ${lexicon:+--lexicon $lexicon} --text $data/$train/text \
    ${lm_text:+--vocab-text $lm_text} ${vocab_size:+--vocab-size $vocab_size} $data/lang
  stage_done 3
fi

# The LM: a given ARPA ($arpa, e.g. LibriSpeech's 3-gram.pruned.1e-7.arpa.gz, read gzipped),
# else our own estimate from $lm_text.
arpa=${arpa:-}; lm=${arpa:-$data/lm/3gram.arpa}
if stage 4 "language model: interpolated Kneser-Ney trigram (or the given --arpa)"; then
  if [ -z "$arpa" ]; then
    asrkd train-lm --order 3 --vocab $data/lang/words.txt --dev-text $data/$dev/text $lm_opts \
      $lm_text $data/lm/3gram.arpa
  fi
  stage_done 4
fi

if stage 5 "monophone GMM-HMM (on $mono_fraction of the training speakers, as Kaldi)"; then
  asrkd subset-data-dir --fraction $mono_fraction $data/${train}_mfcc \
    $data/${train}_mfcc_mono $data/${train}_mfcc_rest
  $asrkd_cmd asrkd train-mono --nj $nj --num-iters $mono_iters --num-gauss $mono_gauss \
    $data/${train}_mfcc_mono $data/lang $exp/mono
  $asrkd_cmd asrkd align --nj $nj $data/${train}_mfcc $data/lang $exp/mono $exp/mono_ali
  stage_done 5
fi

if stage 6 "triphone GMM-HMM (context-dependent tree: the DNN targets)"; then
  $asrkd_cmd asrkd train-tri --nj $nj --num-iters $tri_iters --num-leaves $tri_leaves \
    --num-gauss $tri_gauss $data/${train}_mfcc $data/lang $exp/mono_ali $exp/tri
  stage_done 6
fi

if stage 7 "forced alignment of train/dev/test with the triphone system"; then
  $asrkd_cmd asrkd align --nj $nj $data/${train}_mfcc $data/lang $exp/tri $exp/tri_ali_$train
  # dev/test speakers are unseen: a wider retry beam so that the references are complete
  for s in $eval_sets; do
    $asrkd_cmd asrkd align --nj $nj --retry-beam 400 $data/${s}_mfcc $data/lang $exp/tri $exp/tri_ali_$s
  done
  stage_done 7
fi

# The GMM systems, each its own acoustic scale chosen on dev (a grid, widened past an edge) and
# applied to the test sets; frame accuracy only for the triphone system: its tree is the
# alignments'. gmm_decode SYSTEM NJ
gmm_decode() {
  local m=$1 nj=$2 t fa=
  [ $m = tri ] && fa="--ali-dir $exp/tri_ali_$dev"
  $asrkd_cmd asrkd decode $decode_opts --nj $nj --acwt-grid $gmm_acwt_grid $fa \
    $exp/$m/graph $data/${dev}_mfcc $exp/$m $exp/$m/decode_$dev
  for t in $tests; do
    [ $t != $dev ] || continue   # dev is already decoded (with its best scale)
    fa=; [ $m = tri ] && fa="--ali-dir $exp/tri_ali_$t --frame-acc-data $data/${t}_mfcc"
    $asrkd_cmd asrkd decode $decode_opts --nj $nj --acwt-from $exp/$m/decode_$dev $fa \
      $exp/$m/graph $data/$(wer_set $t)_mfcc $exp/$m $exp/$m/decode_$t
  done
}

if stage 8 "decoding graphs (HCLG); the monophone system decoded as soon as its graph is built"; then
  # the triphone graph takes longest: the monophone system's graph and its decoding (stage 9's
  # part for it) run on the other core meanwhile
  mono_job() { asrkd make-graph $data/lang $exp/mono $lm $exp/mono/graph && gmm_decode mono 1; }
  run_bg $exp/tri/log/make_graph.log asrkd make-graph $data/lang $exp/tri $lm $exp/tri/graph
  run_bg $exp/mono/log/make_graph.log mono_job
  wait_bg
  stage_done 8
fi

if stage 9 "GMM decoding: the triphone system's acoustic scale chosen on dev, applied to test"; then
  gmm_decode tri $nj
  [ -f $exp/mono/decode_$dev/best_acwt ] || gmm_decode mono $nj   # (stage 8 decodes it)
  stage_done 9
fi

if stage 10 "ensemble: $num_models DNNs with different seeds"; then
  # ensemble_launcher (cmd.sh): local processes, or one Slurm array task per member
  # seeds seed*N+1 .. seed*N+N: another --seed draws other initialisations as well as other data
  seeds=$(seq -s, $(( seed * num_models + 1 )) $(( (seed + 1) * num_models )))
  $asrkd_cmd asrkd train-ensemble --nj $nj --seeds $seeds --conf $conf/$dnn_conf \
    --launcher "${ensemble_launcher:-local}" $data/$train $exp/tri_ali_$train $exp/teachers
  stage_done 10
fi

if stage 11 "soft targets: the ensemble's distribution at temperature $temperature on $kd_train"; then
  if [ -n "$transfer" ]; then  # features and CMVN carried over: nothing recomputed
    asrkd combine-data-dirs $data/$kd_train $data/$train $data/$transfer
  fi
  $asrkd_cmd asrkd soft-targets --nj $nj --temperature $temperature --combine arith --topk $topk \
    $data/$kd_train $exp/teachers $exp/soft_T$temperature
  stage_done 11
fi

# DNN decoding. Every DNN system is searched once per utterance on dev and on each test set
# (lattices at the grid's middle scale, every scale of the grid and of its widening read off
# them and scored: `decode --grid-only`). Then the acoustic scale is chosen on dev
# (`asrkd choose-acwt`) and applied to the dev and test decodes: by default each system's own
# (the least word errors on its dev decode: systems differ in calibration, e.g. an ensemble's
# averaged posteriors want a larger scale than a model trained on hard targets); with
# --acwt-choice shared, one scale for all of them, the least summed dev errors.
teacher_systems() { echo $(ls -d $exp/teachers/model* | sort -V) $exp/teachers; }
# singles_split WHICH: the single models decoded for WER (decoded: the first $wer_singles, all
# when 0) or the others (frame_only: frame accuracy on the test sets, a forward pass)
singles_split() {
  local all=($(ls -d $exp/teachers/model* | sort -V)) n=$wer_singles
  { [ "$n" -gt 0 ] && [ "$n" -lt ${#all[@]} ]; } || n=${#all[@]}
  if [ "$1" = decoded ]; then echo ${all[@]:0:$n}; else echo ${all[@]:$n}; fi
}
# frame_acc_of SYSTEM... : frame accuracy (a forward pass, no decoding) on every test set, for
# the systems without it ({model}/decode_<test>/frame_acc_per_utt, what `asrkd report` reads)
frame_acc_of() {
  local m t
  for m in "$@"; do
    for t in $tests; do
      [ -f $m/decode_$t/frame_acc_per_utt ] || \
        asrkd frame-accuracy $data/$t $exp/tri_ali_$t $m $m/decode_$t
    done
  done
}
# The control: the same-size student's model, schedule and regularisation on hard targets only,
# so that distilled - control isolates the soft targets. Not needed when the student's recipe is
# the teachers' (then the single models are the control).
control=; [ "$student_conf" = "$dnn_conf" ] || control=$exp/control
# With a transfer set the student sees more frames per epoch than the control, and makes more
# updates. Two more systems compare like with like: the paper's own setting, a student
# distilled on the training set only (distill_train, against the control), and a control given
# the transfer-set student's updates per epoch (control_matched, against the student).
distill_train= control_matched=
if [ -n "$transfer" ]; then
  distill_train=$exp/distill_train
  control_matched=$exp/control_matched
fi
# epoch_frames MODEL_DIR: the frames of its first epoch (train_log.csv's "frames" column): what
# an update-matched control is given per epoch
epoch_frames() {
  awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "frames") c = i} NR == 2 {print $c}' \
    $1/train_log.csv
}
# wait_first_epoch MODEL_DIR FAILED_MARKER: until MODEL_DIR's first epoch is logged (another
# process trains it); fails if that training failed (its marker file appears)
wait_first_epoch() {
  until [ -f $1/train_log.csv ] && [ $(wc -l < $1/train_log.csv) -ge 2 ]; do
    if [ -f $2 ]; then log "error: $1 failed to train (see $2)"; return 1; fi
    sleep 2
  done
}
student_seed=$(( seed * 1000 + 1 ))   # the students' and the control's initialisation
# What a DNN's posteriors are divided by in decoding: the training alignment's pdf counts, or
# the model's own mean posterior on (a part of) the training set (asrkd adjust-priors, as
# Kaldi's nnet3-am-adjust-priors), written into each model dir before its decoding.
priors=${priors:-counts}
acwt_choice=${acwt_choice:-system}
acwt_dnn=$exp/acwt_dnn   # stage 13's one acoustic scale for the DNN systems (--acwt-choice shared)
decode_grid() {  # NJ SYSTEM...: grid-only decodes of dev and of every test set, none chosen
  local nj=$1 t m also first opts; shift
  [ $# -gt 0 ] || return 0
  if [ "$priors" = posterior ]; then
    local need=
    for m in "$@"; do [ -f $m/priors_posterior ] || need="$need $m"; done
    [ -z "$need" ] || asrkd adjust-priors --max-frames 50000 $need $data/$train
  fi
  first=$1; shift
  for t in $dev $tests; do
    also=""
    for m in "$@"; do also="$also --also $m $m/decode_$t"; done
    opts="--ali-dir $exp/tri_ali_$t"   # frame accuracy on all of $t, WER on $(wer_set $t)
    [ $(wer_set $t) = $t ] || opts="$opts --frame-acc-data $data/$t"
    $asrkd_cmd asrkd decode $decode_opts --nj $nj --priors $priors --grid-only \
      --acwt-grid $dnn_acwt_grid $opts $exp/tri/graph $data/$(wer_set $t) \
      $first $first/decode_$t $also
  done
}
choose_acwt() {  # SYSTEM...: the scale of each (or, shared, of all) chosen on dev and applied
  local m t apply all= devs=
  for m in "$@"; do
    apply=
    for t in $tests; do [ $t = $dev ] || apply="$apply --apply $m/decode_$t"; done
    if [ "$acwt_choice" = shared ]; then
      devs="$devs $m/decode_$dev" all="$all$apply"
    else  # the dev decode dir keeps the system's own choice (best_acwt, acwt_wers, acwt_edge)
      asrkd choose-acwt $m/decode_$dev $m/decode_$dev $apply
    fi
  done
  [ -z "$devs" ] || asrkd choose-acwt $acwt_dnn $devs $all
}
decode_dnn() {  # NJ SYSTEM...: decode_grid, then each system's scale (or stage 13's shared one)
  local nj=$1 t m apply=; shift
  decode_grid $nj "$@"
  if [ "$acwt_choice" = shared ]; then
    for m in "$@"; do for t in $dev $tests; do apply="$apply --apply $m/decode_$t"; done; done
    [ -z "$apply" ] || asrkd choose-acwt $acwt_dnn $apply
  else
    choose_acwt "$@"
  fi
}
undecoded() {  # SYSTEM...: those without a grid-only decode of dev and of every test set
  local m t
  for m in "$@"; do
    for t in $dev $tests; do [ -f $m/decode_$t/acwt_values ] || { echo $m; break; }; done
  done
}

if stage 12 "distillation: same-size and small students, the controls and the small student on hard targets"; then
  # Two processes (2 cores), one thread each (threads competing for the cores slow torch
  # down), each a list of trainings of about equal length. The update-matched control starts
  # when the distilled model's first epoch (and so its frames per epoch) is logged.
  frames=$exp/teachers/frames   # the teachers' frame cache, shared
  kd_opts="--temperature $temperature --alpha $alpha --cache-dir $frames --num-threads 1 --seed $student_seed"
  train_opts="--seed $student_seed --cache-dir $frames --num-threads 1"
  rm -f $exp/log/distill.failed
  worker_a() {  # the same-size student (transfer set included), the control, the small model
    # utterances of $kd_train with no alignment (the transfer set) get soft targets only
    $asrkd_cmd asrkd distill $kd_opts --conf $conf/$student_conf \
      $data/$kd_train $exp/tri_ali_$train $exp/soft_T$temperature $exp/distill || {
      touch $exp/log/distill.failed; return 1; }
    if [ -n "$control" ]; then
      $asrkd_cmd asrkd train --conf $conf/$student_conf $train_opts \
        $data/$train $exp/tri_ali_$train $control
    fi
    $asrkd_cmd asrkd train --conf $conf/$small_conf $train_opts \
      $data/$train $exp/tri_ali_$train $exp/student_small_hard
  }
  worker_b() {  # the small student, the update-matched control, the train-only student
    $asrkd_cmd asrkd distill $kd_opts --conf $conf/$small_conf \
      $data/$kd_train $exp/tri_ali_$train $exp/soft_T$temperature $exp/student_small_kd
    if [ -n "$control_matched" ]; then
      wait_first_epoch $exp/distill $exp/log/distill.failed
      $asrkd_cmd asrkd train --conf $conf/$student_conf $train_opts \
        --frames-per-epoch $(epoch_frames $exp/distill) $data/$train $exp/tri_ali_$train \
        $control_matched
    fi
    if [ -n "$distill_train" ]; then  # the same soft targets, on the teachers' utterances
      $asrkd_cmd asrkd distill $kd_opts --conf $conf/$student_conf --aligned-only \
        $data/$train $exp/tri_ali_$train $exp/soft_T$temperature $distill_train
    fi
  }
  run_bg $exp/log/worker_a.log worker_a
  run_bg $exp/log/worker_b.log worker_b
  wait_bg
  stage_done 12
fi

# dnn_systems: every DNN system decoded by stage 13
dnn_systems() {
  echo $(singles_split decoded) $exp/teachers $exp/distill $control $distill_train $control_matched \
    $exp/student_small_kd $exp/student_small_hard
}

if stage 13 "hybrid decoding of every DNN system (dev and test, frame accuracy); acoustic scales chosen on dev ($acwt_choice)"; then
  # two processes of one job each: both cores busy whatever the number of systems; one torch
  # thread each (their forward passes, adjust-priors' too: the same bits as with two threads,
  # measured, and no threads competing for the cores); each process chooses its systems' own
  # scales as it goes (--acwt-choice shared: one choice over all of them at the end)
  todo=($(undecoded $(dnn_systems)))
  done_before=$(for m in $(dnn_systems); do [[ " ${todo[*]} " == *" $m "* ]] || echo $m; done)
  half=$(( (${#todo[@]} + 1) / 2 ))
  job=decode_dnn; [ "$acwt_choice" = system ] || job=decode_grid
  decode_b() { $job 1 "$@"; frame_acc_of $(singles_split frame_only); }
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 run_bg $exp/log/decode_a.log $job 1 ${todo[@]:0:$half}
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 run_bg $exp/log/decode_b.log decode_b ${todo[@]:$half}
  wait_bg
  if [ "$acwt_choice" = system ]; then
    choose_acwt $done_before  # systems decoded by an earlier run of this stage
  else
    choose_acwt $(dnn_systems)
  fi
  stage_done 13
fi

# teacher_rows PREFIX [CONTROL]: the singles, the ensemble and (given its dir) the control as
# systems.tsv rows, their model dirs under PREFIX (relative to the manifest's dir)
teacher_rows() {
  local m prefix=$1 ctl=${2:-}
  for m in $(ls -d $exp/teachers/model* | sort -V); do
    printf '%s\tsingle\t%steachers/%s\t-\tsingle DNN %s\n' ${m##*/} "$prefix" ${m##*/} ${m##*model}
  done
  printf 'ensemble\tensemble\t%steachers\tsingle\tDNN ensemble\n' "$prefix"
  [ -z "$ctl" ] || printf 'control\tcontrol\t%scontrol\tsingle\tsame-size DNN, hard targets, student recipe (control)\n' "$prefix"
}

# The systems manifest (what the report reports: key, kind, model dir, compared with, label),
# then the report.
report() {
  local m kd_label=
  [ -z "$transfer" ] || kd_label=", train + transfer set"
  {
    printf '# key\tkind\tmodel\tcompare\tlabel\n'
    printf 'mono\tgmm\tmono\t-\tGMM monophone\n'
    printf 'tri\tgmm\ttri\t-\tGMM triphone\n'
    teacher_rows "" $control
    if [ -n "$control_matched" ]; then
      printf 'control_matched\tcontrol\tcontrol_matched\tsingle\tsame-size DNN, hard targets, the distilled model'"'"'s updates per epoch (control)\n'
      printf 'distill\tstudent\tdistill\tsingle,control_matched%s\tdistilled DNN (same size%s)\n' "${control:+,control}" "$kd_label"
      printf 'distill_train\tstudent\tdistill_train\tsingle%s\tdistilled DNN (same size, train only: the paper'"'"'s setting)\n' "${control:+,control}"
    else
      printf 'distill\tstudent\tdistill\tsingle%s\tdistilled DNN (same size)\n' "${control:+,control}"
    fi
    printf 'student_small_hard\tcontrol\tstudent_small_hard\t-\tsmall DNN, hard targets only\n'
    printf 'student_small_kd\tstudent\tstudent_small_kd\tstudent_small_hard\tsmall DNN, distilled%s\n' "$kd_label"
    for m in $(ls -d $exp/specialists_K* 2>/dev/null | sort -V); do
      printf '%s\tother\t%s\tdistill\tdistilled DNN + %s specialists\n' ${m##*/} ${m##*/} ${m##*_K}
    done
  } > $exp/systems.tsv
  asrkd report $exp --test-sets $tests --dev-set $dev --data $data
}

if stage 14 "report"; then
  report
  stage_done 14
fi

if [ "${specialists:-0}" -gt 0 ] && stage 15 "specialists: $specialists on the distilled model's confusable pdf sets"; then
  spec=$exp/specialists_K$specialists
  $asrkd_cmd asrkd train-specialists --nj $nj --num-sets $specialists --lang $data/lang \
    --cache-dir $exp/teachers/frames $exp/distill $data/$train $exp/tri_ali_$train $spec
  decode_dnn $nj $spec
  for t in $tests; do
    asrkd specialist-report --ensemble $exp/teachers $spec $data/$t $exp/tri_ali_$t
  done
  report  # with the specialists' row
  stage_done 15
fi

study_topk=${study_topk:-0}
if [ -n "$temperatures" ] && stage 16 "temperature study: a same-size student at each T of '$temperatures'"; then
  # One set of teachers, soft targets at each T, one student per T with stage 12's data, recipe
  # and seed. The stores keep $study_topk pdfs per frame (0: all of them, dense): a top-k store
  # keeps less of the mass at a higher T, which would confound temperature with lost mass. A
  # student whose store is stage 12's (T = --temperature, top-k = --topk) is stage 12's own.
  # Frame accuracy on the test sets, paired differences to the first T, from `asrkd report`.
  study=$exp/temperature_study
  ctrl=$control; [ -f "$ctrl/final.pt" ] || ctrl=   # (a run of an older recipe has none)
  mkdir -p $study
  store_of() {  # T: the soft-target dir of the study at T
    if [ "$study_topk" = "$topk" ]; then echo $exp/soft_T$1; else echo $exp/soft_T$1_k$study_topk; fi
  }
  reuses_stage12() {  # T
    [ "$study_topk" = "$topk" ] && awk -v a=$1 -v b=$temperature 'BEGIN{exit !(a == b)}'
  }
  queue=("" "")   # the new students, split over two background processes (2 cores)
  i=0
  for T in $temperatures; do
    if [ ! -f $(store_of $T)/meta.json ]; then
      $asrkd_cmd asrkd soft-targets --nj $nj --temperature $T --combine arith --topk $study_topk \
        $data/$kd_train $exp/teachers $(store_of $T)
    fi
    if ! reuses_stage12 $T; then
      queue[$i]="${queue[$i]} $T"; i=$(( 1 - i ))
    fi
  done
  students_at() {  # T...: one student each, one after the other
    local T
    for T in "$@"; do
      $asrkd_cmd asrkd distill --temperature $T --alpha $alpha --cache-dir $exp/teachers/frames \
        --num-threads 1 --seed $student_seed --conf $conf/$student_conf \
        $data/$kd_train $exp/tri_ali_$train $(store_of $T) $study/T$T
    done
  }
  run_bg $study/log/students_a.log students_at ${queue[0]}
  run_bg $study/log/students_b.log students_at ${queue[1]}
  wait_bg
  students=
  first=$(echo $temperatures | awk '{print $1}')
  {
    printf '# key\tkind\tmodel\tcompare\tlabel\n'
    teacher_rows ../ $ctrl
    for T in $temperatures; do
      m=T$T; reuses_stage12 $T && m=../distill
      students="$students $study/$m"
      cmp=single${ctrl:+,control}; [ "$T" = "$first" ] || cmp="$cmp,T$first"
      printf 'T%s\tstudent\t%s\t%s\tdistilled DNN, T = %s\n' $T $m $cmp $T
    done
  } > $study/systems.tsv
  frame_acc_of $(teacher_systems) $ctrl $students
  asrkd report $study --test-sets $tests --data $data
  cat $study/results.md
  stage_done 16
fi

if [ "$small_fraction" != 0 ] && stage 17 "small-data table: $small_fraction of the training utterances, hard vs soft targets"; then
  # The paper's table 5: the teachers' model ($small_data_conf: more epochs) trained on a
  # small share of the training set with hard targets only, and with the full ensemble's soft
  # targets (stage 11's, same T and alpha),
  # both on the same aligned utterances (the same seed draws them; the student also gets that
  # share of any training utterance whose alignment failed, soft targets only). Train frame
  # accuracy is measured on the hard-target model's utterances (EXP/train_utts, written by
  # training), for the full-data singles too: a column of the report.
  sd=$exp/small_data
  mkdir -p $sd
  run_bg $sd/log/hard.log $asrkd_cmd asrkd train --conf $conf/$small_data_conf --seed $student_seed \
    --train-fraction $small_fraction --cache-dir $exp/teachers/frames --num-threads 1 \
    $data/$train $exp/tri_ali_$train $sd/hard
  run_bg $sd/log/soft.log $asrkd_cmd asrkd distill --temperature $temperature --alpha $alpha \
    --train-fraction $small_fraction --cache-dir $exp/teachers/frames --num-threads 1 \
    --seed $student_seed --conf $conf/$small_data_conf \
    $data/$train $exp/tri_ali_$train $exp/soft_T$temperature $sd/soft
  wait_bg
  awk 'NR == FNR {ali[$1]; next} $1 in ali' $exp/tri_ali_$train/pdf.scp $sd/soft/train_utts | \
    cmp -s - $sd/hard/train_utts || \
    log "warning: the hard- and soft-target models were trained on different utterances"
  pct=$(awk -v f=$small_fraction 'BEGIN{printf "%g", 100 * f}')
  for m in $(ls -d $exp/teachers/model* | sort -V) $sd/hard $sd/soft; do
    asrkd frame-accuracy --utts $sd/hard/train_utts $data/$train $exp/tri_ali_$train $m \
      $m/decode_${train}_small
  done
  {
    printf '# key\tkind\tmodel\tcompare\tlabel\n'
    for m in $(ls -d $exp/teachers/model* | sort -V); do
      printf '%s\tsingle\t../teachers/%s\t-\tsingle DNN %s (100%% of train)\n' ${m##*/} ${m##*/} ${m##*model}
    done
    printf 'hard\tcontrol\thard\tsingle\t%s%% of train, hard targets\n' $pct
    printf 'soft\tstudent\tsoft\thard\t%s%% of train, soft targets of the full ensemble\n' $pct
  } > $sd/systems.tsv
  frame_acc_of $(ls -d $exp/teachers/model* | sort -V) $sd/hard $sd/soft
  asrkd report $sd --test-sets $tests --train-set ${train}_small --data $data
  cat $sd/results.md
  stage_done 17
fi

student_seeds=${student_seeds:-1}
if [ "$student_seeds" -gt 1 ] && stage 18 "seed spread: the students and their controls from $student_seeds initialisations"; then
  # Stage 12's same-size students and controls again from other seeds (seed i: the recipe's
  # student seed + i - 1; seed 1 is stage 12's own), on the same teachers and soft targets, each
  # decoded at its own dev-tuned scale: distilled - control against the spread of training seeds.
  sd=$exp/student_seeds
  mkdir -p $sd
  frames=$exp/teachers/frames
  seed_pair() {  # I: the student and its control of seed I (two background processes)
    local i=$1 s=$(( student_seed + $1 - 1 )) fpe
    local opts="--cache-dir $frames --num-threads 1 --seed $s --conf $conf/$student_conf"
    $asrkd_cmd asrkd distill --temperature $temperature --alpha $alpha $opts \
      $data/$kd_train $exp/tri_ali_$train $exp/soft_T$temperature $sd/distill_s$i
    if [ -n "$control_matched" ]; then
      fpe=$(epoch_frames $sd/distill_s$i)
      $asrkd_cmd asrkd train $opts --frames-per-epoch $fpe $data/$train $exp/tri_ali_$train \
        $sd/control_matched_s$i
    else
      $asrkd_cmd asrkd train $opts $data/$train $exp/tri_ali_$train $sd/control_s$i
    fi
  }
  for i in $(seq 2 $student_seeds); do
    run_bg $sd/log/seed$i.log seed_pair $i
    if [ $(( i % 2 )) = 1 ]; then wait_bg; fi  # two at a time
  done
  wait_bg
  ctl=control_matched; [ -n "$control_matched" ] || ctl=control
  todo=()
  for i in $(seq 2 $student_seeds); do todo+=($sd/distill_s$i $sd/${ctl}_s$i); done
  todo=($(undecoded ${todo[@]}))
  half=$(( (${#todo[@]} + 1) / 2 ))
  run_bg $sd/log/decode_a.log decode_dnn 1 ${todo[@]:0:$half}
  run_bg $sd/log/decode_b.log decode_dnn 1 ${todo[@]:$half}
  wait_bg
  {
    printf '# key\tkind\tmodel\tcompare\tlabel\n'
    teacher_rows ../
    for i in $(seq 1 $student_seeds); do
      m=distill_s$i c=${ctl}_s$i
      [ $i -gt 1 ] || { m=../distill; c=../$ctl; }
      [ -z "$control" ] && [ -z "$control_matched" ] && c=
      [ -z "$c" ] || printf '%s_s%s\tcontrol\t%s\tsingle\tcontrol, seed %s\n' $ctl $i $c $i
      printf 'distill_s%s\tstudent\t%s\tsingle%s\tdistilled DNN, seed %s\n' $i $m "${c:+,${ctl}_s$i}" $i
    done
  } > $sd/systems.tsv
  asrkd report $sd --test-sets $tests --dev-set $dev --data $data
  cat $sd/results.md
  stage_done 18
fi

# A finished run (or a rerun of one, which skips every stage) ends by printing the report.
if [ "$stop_stage" -ge 14 ] && [ -f $exp/results.md ]; then
  cat $exp/results.md
fi
