"""asrkd train-ensemble: train N DNN acoustic models with different seeds, in parallel jobs."""

from asrkd.errors import UserError
from asrkd.teachers import train_ensemble
from asrkd.train import load_conf


def add_arguments(parser):
    parser.add_argument("data", help="training data dir (fbank feats.scp, cmvn.scp)")
    parser.add_argument("ali_dir", help="alignment dir of DATA (pdf.scp, pdf_counts, num_pdfs)")
    parser.add_argument("exp_dir", help="output dir: model{1..N}/final.pt, log/train.N.log")
    parser.add_argument("--conf", default=None,
                        help="YAML with model: and train: sections (e.g. conf/dnn.yaml)")
    parser.add_argument("--num-models", type=int, default=10, help="ensemble size N (seeds 1..N)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds instead of 1..N (sets N)")
    parser.add_argument("--nj", type=int, default=1,
                        help="models trained at once; CPU threads are split between them")
    parser.add_argument("--launcher", default="local",
                        help="local (processes here), submitit-local, or slurm[:key=value,...]: "
                        "the unfinished members as one Slurm job array through submitit, keys "
                        "as submitit's (e.g. slurm:partition=gpu,gpus_per_node=1,"
                        "cpus_per_task=8,mem_gb=32,timeout_min=1440); set in the recipe's "
                        "cmd.sh")


def main(args):
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") \
                from None
    if args.num_models < 1:
        raise UserError("--num-models must be at least 1")
    model_config, train_config = load_conf(args.conf)
    for p in train_ensemble(args.data, args.ali_dir, args.exp_dir, model_config, train_config,
                            num_models=args.num_models, seeds=seeds, nj=args.nj,
                            launcher=args.launcher):
        print(p)
