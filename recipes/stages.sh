# Stages 2 onwards, shared by recipes/*/run.sh (sourced after the recipe's own data stages).
# Expects: $data/$train, $data/$dev and $data/<each of $tests> prepared by stage 1; $lm_text,
# $lexicon (may be empty), $nj, $conf, $exp and the model-size variables.

all_sets="$train $dev $tests"

if stage 2 "features: fbank (DNN) and MFCC (GMM) + per-speaker CMVN"; then
  for s in $all_sets; do
    asrkd copy-data-dir $data/$s $data/${s}_mfcc
    $asrkd_cmd asrkd compute-feats --nj $nj --conf $conf/fbank.yaml $data/$s fbank/$s
    $asrkd_cmd asrkd compute-feats --nj $nj --conf $conf/mfcc.yaml $data/${s}_mfcc mfcc/$s
    asrkd compute-cmvn $data/$s
    asrkd compute-cmvn $data/${s}_mfcc
  done
  stage_done 2
fi

if stage 3 "lang: lexicon, phones, topology, L.fst"; then
  asrkd prepare-lang ${lexicon:+--lexicon $lexicon} --text $data/$train/text $data/lang
  stage_done 3
fi

if stage 4 "language model: interpolated Kneser-Ney trigram"; then
  asrkd train-lm --order 3 --vocab $data/lang/words.txt --dev-text $data/$dev/text \
    $lm_text $data/lm/3gram.arpa
  stage_done 4
fi

if stage 5 "monophone GMM-HMM"; then
  $asrkd_cmd asrkd train-mono --nj $nj --num-gauss $mono_gauss $data/${train}_mfcc $data/lang $exp/mono
  $asrkd_cmd asrkd align --nj $nj $data/${train}_mfcc $data/lang $exp/mono $exp/mono_ali
  stage_done 5
fi

if stage 6 "triphone GMM-HMM (context-dependent tree)"; then
  $asrkd_cmd asrkd train-tri --nj $nj --num-leaves $tri_leaves --num-gauss $tri_gauss \
    $data/${train}_mfcc $data/lang $exp/mono_ali $exp/tri
  stage_done 6
fi

if stage 7 "forced alignment of train/dev/test with the triphone system"; then
  for s in $all_sets; do
    $asrkd_cmd asrkd align --nj $nj $data/${s}_mfcc $data/lang $exp/tri $exp/tri_ali_$s
  done
  stage_done 7
fi

if stage 8 "decoding graphs (HCLG) for the monophone and triphone systems"; then
  asrkd make-graph $data/lang $exp/mono $data/lm/3gram.arpa $exp/mono/graph
  asrkd make-graph $data/lang $exp/tri $data/lm/3gram.arpa $exp/tri/graph
  stage_done 8
fi

if stage 9 "GMM decoding and scoring"; then
  for m in mono tri; do
    asrkd decode --nj $nj $exp/$m/graph $data/${dev}_mfcc $exp/$m $exp/$m/decode_$dev
    for t in $tests; do
      asrkd decode --nj $nj --acwt-from $exp/$m/decode_$dev \
        $exp/$m/graph $data/${t}_mfcc $exp/$m $exp/$m/decode_$t
    done
  done
  stage_done 9
fi

if stage 10 "ensemble: $num_models DNNs with different seeds"; then
  $asrkd_cmd asrkd train-ensemble --nj $nj --num-models $num_models --conf $conf/dnn.yaml \
    $data/$train $exp/tri_ali_$train $exp/teachers
  stage_done 10
fi

if stage 11 "soft targets: the ensemble's distribution at temperature $temperature"; then
  $asrkd_cmd asrkd soft-targets --nj $nj --temperature $temperature --combine arith \
    $data/$train $exp/teachers $exp/soft_T$temperature
  stage_done 11
fi

if stage 12 "distillation: same-size and small students; small student on hard targets"; then
  $asrkd_cmd asrkd distill --temperature $temperature --alpha $alpha --conf $conf/dnn.yaml \
    $data/$train $exp/tri_ali_$train $exp/soft_T$temperature $exp/distill
  $asrkd_cmd asrkd distill --temperature $temperature --alpha $alpha --conf $conf/student_small.yaml \
    $data/$train $exp/tri_ali_$train $exp/soft_T$temperature $exp/student_small_kd
  $asrkd_cmd asrkd train --conf $conf/student_small.yaml --seed 1 \
    $data/$train $exp/tri_ali_$train $exp/student_small_hard
  stage_done 12
fi

if stage 13 "hybrid decoding of every DNN system; frame accuracy"; then
  dnn_systems="$(ls -d $exp/teachers/model* | sort -V) $exp/teachers $exp/distill \
    $exp/student_small_kd $exp/student_small_hard"
  for m in $dnn_systems; do
    asrkd decode --nj $nj --ali-dir $exp/tri_ali_$dev $exp/tri/graph $data/$dev $m $m/decode_$dev
    for t in $tests; do
      asrkd decode --nj $nj --ali-dir $exp/tri_ali_$t --acwt-from $m/decode_$dev \
        $exp/tri/graph $data/$t $m $m/decode_$t
    done
  done
  stage_done 13
fi

if stage 14 "report"; then
  asrkd report $exp
  stage_done 14
fi
