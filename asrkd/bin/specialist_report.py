"""asrkd specialist-report SPEC_DIR DATA ALI_DIR: coverage table and costs of specialists."""


def add_arguments(parser):
    parser.add_argument("spec_dir", help="specialists dir from `asrkd train-specialists`")
    parser.add_argument("data", help="data dir to evaluate on (fbank), e.g. data/test")
    parser.add_argument("ali_dir", help="alignments of DATA (the correct pdfs)")
    parser.add_argument("--ensemble", default=None,
                        help="ensemble dir (model*/final.pt): its inference time per frame and "
                        "model1's training time are reported beside the specialists'")
    parser.add_argument("--name", default=None,
                        help="writes SPEC_DIR/report_NAME.{json,md} (default: DATA's basename)")
    parser.add_argument("--timing-frames", type=int, default=3000,
                        help="frames the inference time is measured on")


def main(args):
    from asrkd.specialists.report import specialist_report

    r = specialist_report(args.spec_dir, args.data, args.ali_dir, ensemble_dir=args.ensemble,
                          name=args.name, timing_frames=args.timing_frames)
    d = r["frame_acc_diff"]
    ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    kept = r["training"]["kept_generalist"]
    print(f"frame accuracy: generalist {100 * r['generalist_frame_acc']:.2f}%, with "
          f"specialists {100 * r['combined_frame_acc']:.2f}% ({d['diff']:+.2f}{ci} points); "
          f"{len(kept)} of {r['num_specialists']} specialists ended at epoch 0")
