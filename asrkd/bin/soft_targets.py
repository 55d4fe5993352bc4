"""asrkd soft-targets DATA TEACHERS_DIR OUT_DIR: store the ensemble's tempered posteriors."""

from asrkd.ensemble import COMBINES
from asrkd.softtargets import compute_soft_targets


def add_arguments(parser):
    parser.add_argument("data", help="data dir with fbank feats.scp, cmvn.scp, utt2num_frames")
    parser.add_argument("teachers_dir", help="dir of teacher models TEACHERS_DIR/model*/final.pt")
    parser.add_argument("out_dir", help="output soft-target dir (index, meta.json, shards)")
    parser.add_argument("--temperature", type=float, default=2.0,
                        help="softmax temperature T applied to every teacher's logits")
    parser.add_argument("--combine", choices=COMBINES, default="arith",
                        help="arith: mean of tempered softmaxes; geo: softmax(mean logits / T)")
    parser.add_argument("--topk", type=int, default=20,
                        help="keep the K most probable pdfs per frame, renormalized (0: all)")
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs")
    parser.add_argument("--device", default="cpu", help="where the teachers run (cpu, cuda)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: the teachers' forward under bfloat16 autocast")


def main(args):
    meta = compute_soft_targets(args.data, args.teachers_dir, args.out_dir,
                                temperature=args.temperature, combine=args.combine,
                                topk=args.topk, nj=args.nj, device=args.device,
                                precision=args.precision)
    print(
        f"soft targets: {meta['num_utts']} utts, {meta['num_frames']} frames, "
        f"{len(meta['teachers'])} teachers, T={meta['temperature']:g} {meta['combine']}, "
        f"top-{meta['topk']} of {meta['num_pdfs']} pdfs: {meta['bytes_per_frame']} bytes/frame "
        f"vs {meta['dense_bytes_per_frame']} dense float32 "
        f"({meta['dense_bytes_per_frame'] / meta['bytes_per_frame']:.1f}x smaller)"
    )
