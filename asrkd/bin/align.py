"""asrkd align: forced alignment with a GMM-HMM (Kaldi steps/align_si.sh)."""

from asrkd.align import align


def add_arguments(parser):
    parser.add_argument("data_dir", help="data dir with MFCC feats.scp, cmvn.scp and text")
    parser.add_argument("lang_dir", help="lang dir (L.fst; OOV words map to <UNK>)")
    parser.add_argument("model_dir", help="GMM model dir (final.mdl, tree)")
    parser.add_argument("ali_dir", help="output dir: ali.scp, pdf.scp, pdf_counts, num_pdfs, "
                                        "final.mdl, tree, failed")
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs")
    parser.add_argument("--beam", type=float, default=10.0, help="alignment beam")
    parser.add_argument("--retry-beam", type=float, default=40.0,
                        help="beam of the second try for utterances that fail at --beam")


def main(args):
    align(args.data_dir, args.lang_dir, args.model_dir, args.ali_dir, nj=args.nj,
          beam=args.beam, retry_beam=args.retry_beam)
