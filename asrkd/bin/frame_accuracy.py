"""asrkd frame-accuracy DATA ALI_DIR MODEL OUT_DIR: frame accuracy with no decoding."""

from asrkd.decode import measure_frame_accuracy
from asrkd.score import read_utt_list


def add_arguments(parser):
    parser.add_argument("data", help="fbank data dir for a DNN (MFCC for a GMM)")
    parser.add_argument("ali_dir", help="alignments of DATA (pdf.scp) from the model's own tree")
    parser.add_argument("model", help="DNN checkpoint, a dir holding final.pt, a dir of "
                        "model*/final.pt (an ensemble: posteriors averaged), or a GMM dir")
    parser.add_argument("out_dir", help="output dir: frame_acc and frame_acc_per_utt, as a "
                        "decode dir holds them (so MODEL/decode_<set> is what `asrkd report` "
                        "reads)")
    parser.add_argument("--utts", default=None, metavar="FILE",
                        help="score only these utterances (one id per line), e.g. a model's "
                        "EXP/train_utts: the data it was trained on")


def main(args):
    utts = read_utt_list(args.utts) if args.utts else None
    measure_frame_accuracy(args.model, args.data, args.ali_dir, args.out_dir, utts=utts)
