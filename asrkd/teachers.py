"""The teacher ensemble: N acoustic models of one config trained with different seeds.

``asrkd train-ensemble`` (stage 10 of the recipes): each member is an ordinary training run
(asrkd.train) in ``EXP/model{i}``, all sharing one frame cache in ``EXP/frames``, run as
parallel local jobs or as one Slurm job array (asrkd.jobs). Finished members are skipped and
interrupted ones resume, so a rerun after a failure trains only what is missing.
"""

import os
import sys

from asrkd.errors import UserError
from asrkd.frames import build_frame_cache
from asrkd.jobs import parse_launcher, run_jobs
from asrkd.models import ModelConfig
from asrkd.train import TrainConfig, is_finished, train_model


def _ensemble_job(data_dir, ali_dir, model_dir, mc, tc, seed, cache_dir):
    train_model(data_dir, ali_dir, model_dir, ModelConfig.from_dict(mc), TrainConfig.from_dict(tc),
                seed, cache_dir=cache_dir)
    return os.path.join(model_dir, "final.pt")


def train_ensemble(data_dir, ali_dir, exp_dir, model_config, train_config, num_models=10,
                   seeds=None, nj=1, launcher="local"):
    """Train models with seeds 1..N (or ``seeds``) into ``exp_dir/model{i}/final.pt``.

    Jobs run in parallel with the CPU threads split between them; finished models are skipped,
    interrupted ones resume. All members share one frame cache in ``exp_dir/frames``.
    ``launcher`` (asrkd.jobs): "slurm[:k=v,...]" trains the unfinished members as one Slurm job
    array (one task each; the same directories and logs), "submitit-local" the same locally.
    Returns the list of final checkpoint paths.
    """
    seeds = list(seeds) if seeds else list(range(1, num_models + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {seeds}")
    cache_dir = os.path.join(exp_dir, "frames")
    build_frame_cache(data_dir, ali_dir, cache_dir, cmvn=model_config.cmvn)  # once, shared
    dirs = [os.path.join(exp_dir, f"model{i + 1}") for i in range(len(seeds))]
    todo = [d for d in dirs if not is_finished(d)]
    if len(todo) < len(dirs):
        print(f"{len(dirs) - len(todo)} of {len(dirs)} models already trained", file=sys.stderr)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nj = max(1, min(nj, len(todo) or 1))
    tc = train_config.to_dict()
    tc["num_threads"] = tc["num_threads"] or max(1, cores // nj)
    kind, params = parse_launcher(launcher)
    if kind != "local":  # a task per unfinished member, threads as the scheduler grants
        tc["num_threads"] = train_config.num_threads or int(params.get("cpus_per_task", 1))
    # Finished members are passed too (they return at once) so log N is always model N's;
    # a cluster gets only the unfinished ones (a task costs a queue slot), logs still numbered N.
    ids = [i + 1 for i, d in enumerate(dirs) if kind == "local" or d in todo]
    args = [(data_dir, ali_dir, dirs[i - 1], model_config.to_dict(), tc, seeds[i - 1], cache_dir)
            for i in ids]
    if todo:
        try:
            run_jobs(_ensemble_job, args, nj, os.path.join(exp_dir, "log"), "train",
                     desc="train-ensemble", threads_per_job=tc["num_threads"],
                     launcher=launcher, job_ids=ids)
        except UserError as e:
            raise UserError(f"{e}; a rerun skips the finished members and resubmits only "
                            "the others") from None
    return [os.path.join(d, "final.pt") for d in dirs]
