"""asrkd train: train one DNN acoustic model on alignment pdf targets."""

from asrkd.train import load_conf, train_model


def add_arguments(parser):
    parser.add_argument("data", help="training data dir (fbank feats.scp, cmvn.scp)")
    parser.add_argument("ali_dir", help="alignment dir of DATA (pdf.scp, pdf_counts, num_pdfs)")
    parser.add_argument("exp_dir", help="output dir: epoch{N}.pt, final.pt, train_log.csv")
    parser.add_argument("--conf", default=None,
                        help="YAML with model: and train: sections (e.g. conf/dnn.yaml)")
    parser.add_argument("--seed", type=int, default=1, help="seed of initialisation and shuffling")
    parser.add_argument("--init-from", default=None, help="checkpoint whose weights start training")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this fraction of the training utterances (by seed)")
    parser.add_argument("--cache-dir", default=None,
                        help="frame cache dir to share (e.g. an ensemble's EXP/frames); "
                             "default EXP_DIR/frames")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (overrides the config)")
    parser.add_argument("--frames-per-epoch", type=int, default=None, metavar="N",
                        help="an epoch is N frames, drawn in passes over the training frames "
                             "(overrides the config's frames_per_epoch): e.g. a control given "
                             "the updates per epoch of a student distilled on more data")


def main(args):
    model_config, train_config = load_conf(args.conf, num_threads=args.num_threads,
                                          frames_per_epoch=args.frames_per_epoch)
    path = train_model(args.data, args.ali_dir, args.exp_dir, model_config, train_config,
                       args.seed, init_from=args.init_from, train_fraction=args.train_fraction,
                       cache_dir=args.cache_dir)
    print(path)
