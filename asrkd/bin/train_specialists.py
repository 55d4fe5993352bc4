"""asrkd train-specialists GENERALIST DATA ALI EXP: confusable pdf sets and their specialists."""


def add_arguments(parser):
    parser.add_argument("generalist", help="the generalist: a DNN checkpoint or a dir holding "
                        "final.pt (e.g. exp/teachers/model1 or exp/distill)")
    parser.add_argument("data", help="training data dir (fbank feats.scp, cmvn.scp)")
    parser.add_argument("ali_dir", help="alignment dir of DATA (pdf.scp; its final.mdl names "
                        "the phones and HMM states of each pdf in sets.md)")
    parser.add_argument("exp_dir", help="output dir: sets.json, sets.md, generalist.pt, "
                        "spec{m}/final.pt, specialists.json; decode it as one MODEL")
    parser.add_argument("--num-sets", type=int, required=True,
                        help="K, the number of specialists (confusable sets)")
    parser.add_argument("--set-size-max", type=int, default=0,
                        help="pdfs per set at most (0: no bound); pdfs that fit no set are "
                        "left to the generalist")
    parser.add_argument("--clusterings", type=int, default=2,
                        help="k-means runs with different seeds the K sets are split over: "
                        "each pdf is in up to this many sets (1: disjoint sets)")
    parser.add_argument("--hard-targets", action="store_true",
                        help="train on the alignment's labels instead of the generalist's "
                        "distribution collapsed onto set + dustbin")
    parser.add_argument("--single-dustbin", action="store_true",
                        help="one output row for the dustbin instead of the log-sum-exp of a "
                        "full output layer's logits outside the set (with which training "
                        "starts from exactly the generalist's collapsed distribution)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per specialist (the best "
                        "on the validation speakers is kept)")
    parser.add_argument("--lr", type=float, default=0.0003, help="Adam learning rate")
    parser.add_argument("--top-n", type=int, default=1,
                        help="at inference, the generalist's top N pdfs choose the active "
                        "specialists")
    parser.add_argument("--gd-steps", type=int, default=10,
                        help="gradient steps of the KL combination at inference")
    parser.add_argument("--gd-lr", type=float, default=2.0,
                        help="their step size, in units of 1 / (1 + active specialists)")
    parser.add_argument("--combine-method", choices=("gd", "em"), default="gd",
                        help="gd: gradient descent on q's logits (the paper); em: fixed-point "
                        "steps that spread each dustbin in proportion to q (faster to converge)")
    parser.add_argument("--cov-frames", type=int, default=0,
                        help="training frames the covariance is accumulated on (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clusterings and "
                        "training")
    parser.add_argument("--lang", default=None,
                        help="lang dir, for phone names in sets.md (default: phone ids)")
    parser.add_argument("--cache-dir", default=None, help="frame cache dir to share (e.g. the "
                        "teachers' EXP/frames); default EXP/frames")
    parser.add_argument("--nj", type=int, default=1,
                        help="specialists trained at once; CPU threads are split between them")


def main(args):
    from asrkd.specialists.train import SpecialistConfig, train_specialists

    config = SpecialistConfig(num_sets=args.num_sets, set_size_max=args.set_size_max,
                              clusterings=args.clusterings, hard_targets=args.hard_targets,
                              pooled_dustbin=not args.single_dustbin,
                              epochs=args.epochs, lr=args.lr, top_n=args.top_n,
                              gd_steps=args.gd_steps, gd_lr=args.gd_lr,
                              combine_method=args.combine_method, cov_frames=args.cov_frames,
                              seed=args.seed)
    print(train_specialists(args.generalist, args.data, args.ali_dir, args.exp_dir, config,
                            nj=args.nj, lang_dir=args.lang, cache_dir=args.cache_dir))
