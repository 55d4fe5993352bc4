"""asrkd distill DATA ALI_DIR SOFT_DIR EXP_DIR: train a student on soft and hard targets."""

from asrkd.distill import distill
from asrkd.ensemble import COMBINES


def add_arguments(parser):
    parser.add_argument("data", help="training data dir (fbank feats.scp, cmvn.scp); its "
                        "utterances without an alignment in ALI_DIR (a transfer set of "
                        "unlabeled audio) are trained on the soft targets alone")
    parser.add_argument("ali_dir", help="alignment dir of DATA (pdf.scp: the hard targets)")
    parser.add_argument("soft_dir", help="soft-target dir from `asrkd soft-targets`; with "
                        "--on-the-fly, the teachers dir (model*/final.pt) instead")
    parser.add_argument("exp_dir", help="output dir of the student (final.pt, train_log.csv)")
    parser.add_argument("--conf", default=None,
                        help="student YAML (model:, train: sections), e.g. conf/dnn.yaml or "
                        "conf/student_small.yaml; default: built-in defaults")
    parser.add_argument("--temperature", type=float, default=None,
                        help="temperature T (default: the soft targets' own; must match them)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the soft-target term (1 - alpha on the hard targets)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the student")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this fraction of the training utterances")
    parser.add_argument("--on-the-fly", action="store_true",
                        help="run the teacher ensemble on every batch instead of reading stored "
                        "soft targets (SOFT_DIR is then the teachers dir)")
    parser.add_argument("--combine", choices=COMBINES, default="arith",
                        help="with --on-the-fly: how the teachers' distributions are combined")
    parser.add_argument("--topk", type=int, default=0,
                        help="with --on-the-fly: keep the top K pdfs per frame (0: all)")
    parser.add_argument("--aligned-only", action="store_true",
                        help="leave out DATA's utterances without an alignment (no transfer "
                        "set: the student sees the utterances its teachers trained on, as in "
                        "the paper)")
    parser.add_argument("--init-from", default=None,
                        help="checkpoint whose weights initialise the student")
    parser.add_argument("--cache-dir", default=None,
                        help="frame cache dir to share (e.g. the teachers' EXP/frames); "
                        "default EXP_DIR/frames")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (overrides the config)")


def main(args):
    from asrkd.train import load_conf

    model_config, train_config = load_conf(args.conf, num_threads=args.num_threads)
    soft, teachers = (None, args.soft_dir) if args.on_the_fly else (args.soft_dir, None)
    final = distill(args.data, args.ali_dir, soft, args.exp_dir, model_config, train_config,
                    temperature=args.temperature, alpha=args.alpha, seed=args.seed,
                    teachers_dir=teachers, combine=args.combine, topk=args.topk,
                    train_fraction=args.train_fraction, init_from=args.init_from,
                    cache_dir=args.cache_dir, aligned_only=args.aligned_only)
    print(f"student: {final}")
