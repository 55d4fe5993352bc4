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
    parser.add_argument("--set-method", choices=("confusion", "kmeans"), default="confusion",
                        help="confusion: greedy growth on the generalist's confusion matrix "
                        "(default); kmeans: k-means on the covariance of its posteriors")
    parser.add_argument("--set-size-max", type=int, default=0,
                        help="pdfs per set at most (0: about P / K, never more than P / 2)")
    parser.add_argument("--clusterings", type=int, default=2,
                        help="kmeans: k-means runs with different seeds the K sets are split "
                        "over: each pdf is in up to this many sets (1: disjoint sets)")
    parser.add_argument("--targets", choices=("hard", "soft"), default="hard",
                        help="hard: the alignment's labels, every other pdf in the dustbin (the "
                        "paper's 5.2); soft: mixed with the ensemble's soft targets collapsed "
                        "onto set + dustbin (6.1; needs --soft-targets)")
    parser.add_argument("--hard-targets", action="store_true",
                        help="the same as --targets hard (the default)")
    parser.add_argument("--soft-targets", default=None, metavar="DIR",
                        help="the ensemble's stored soft targets of DATA at T = 1 (`asrkd "
                        "soft-targets`, e.g. exp/soft_T1), for --targets soft")
    parser.add_argument("--soft-weight", type=float, default=0.5,
                        help="--targets soft: weight of the soft-target CE (the rest: hard)")
    parser.add_argument("--single-dustbin", action="store_true",
                        help="one output row for the dustbin instead of the log-sum-exp of a "
                        "full output layer's logits outside the set (with which training "
                        "starts from exactly the generalist's collapsed distribution)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per specialist (the best "
                        "by --select on the validation frames where it is active is kept; the "
                        "untrained one, i.e. the generalist, competes)")
    parser.add_argument("--select", choices=("acc", "loss"), default="acc",
                        help="which epoch is kept: the one whose combination with the "
                        "generalist has the highest frame accuracy (acc) or the lowest "
                        "cross-entropy (loss) on those validation frames")
    parser.add_argument("--batch-size", type=int, default=256, help="frames per update")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam learning rate")
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
                        help="training frames the confusions are accumulated on (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clusterings and "
                        "training")
    parser.add_argument("--lang", default=None,
                        help="lang dir, for phone names in sets.md (default: phone ids)")
    parser.add_argument("--cache-dir", default=None, help="frame cache dir to share (e.g. the "
                        "teachers' EXP/frames); default EXP/frames")
    parser.add_argument("--nj", type=int, default=1,
                        help="specialists trained at once; CPU threads are split between them")


def main(args):
    from asrkd.errors import UserError
    from asrkd.specialists.train import SpecialistConfig, train_specialists

    if args.hard_targets and args.targets != "hard":
        raise UserError("--hard-targets contradicts --targets soft")
    config = SpecialistConfig(num_sets=args.num_sets, set_method=args.set_method,
                              set_size_max=args.set_size_max, clusterings=args.clusterings,
                              targets=args.targets, soft_weight=args.soft_weight,
                              pooled_dustbin=not args.single_dustbin, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, top_n=args.top_n,
                              gd_steps=args.gd_steps, gd_lr=args.gd_lr,
                              combine_method=args.combine_method, cov_frames=args.cov_frames,
                              seed=args.seed, select=args.select)
    print(train_specialists(args.generalist, args.data, args.ali_dir, args.exp_dir, config,
                            nj=args.nj, lang_dir=args.lang, cache_dir=args.cache_dir,
                            soft_dir=args.soft_targets))
