"""The same bytes whatever the CPU's vector paths and core count (recipes/lib.sh's pinning).

A GMM (train-mono) and a DNN (train) run as subprocesses under the recipe's environment, once
as the recipe runs them with one thread and one job, once with two threads, two jobs and every
AVX-512 path we know of disabled on top (numpy's dispatch, oneDNN, torch, the BLAS): the models must be
byte-identical (the GMM) and tensor-identical (the DNN). Without the pinning (the libraries
choosing for themselves) a machine with AVX-512 may differ (README: "Same numbers on another
machine"); on one without AVX-512 it must not.
"""

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512_OFF = ("X86_V4 AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL "
              "AVX512_ICL AVX512_SPR AVX512FP16")


def _recipe_env(native=False):
    """The environment recipes/lib.sh exports (ASRKD_NATIVE_KERNELS=1: none of it)."""
    env = dict(os.environ, ASRKD_NATIVE_KERNELS="1" if native else "0")
    for k in ("OPENBLAS_CORETYPE", "MKL_CBWR", "ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES",
              "ONEDNN_MAX_CPU_ISA"):
        env.pop(k, None)
    out = subprocess.run(["bash", "-c", f". {REPO}/recipes/lib.sh >/dev/null; env -0"], env=env,
                         capture_output=True, text=True, check=True).stdout
    env = dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)
    env.pop("ASRKD_DIE_WITH_PARENT", None)  # (the pid of that shell, gone)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env["PYTHONPATH"] = REPO
    return env


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def _run(args, env, threads):
    env = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-m", "asrkd", *args], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def _models(tiny_data, tiny_hybrid, root, env, threads, nj):
    mono, dnn = str(root / "mono"), str(root / "dnn")
    _run(["train-mono", "--num-iters", "4", "--num-gauss", "120", "--nj", str(nj),
          tiny_data["train_mfcc"], tiny_hybrid["lang"], mono], env, threads)
    conf = root / "dnn.yaml"
    conf.write_text("model:\n  left_context: 3\n  right_context: 3\n  hidden_dims: [48]\n"
                    "train:\n  epochs: 2\n  min_epochs: 2\n  batch_size: 128\n"
                    "  tensorboard: false\n")
    _run(["train", "--conf", str(conf), "--num-threads", "1", "--seed", "3", tiny_data["train"],
          tiny_hybrid["ali"], dnn], env, threads)
    gmm = open(os.path.join(mono, "final.mdl"), "rb").read()
    net = torch.load(os.path.join(dnn, "final.pt"), map_location="cpu",
                     weights_only=True)["state_dict"]
    return gmm, net


def _same_net(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(sys.platform != "linux", reason="the pinning is for x86-64 Linux")
def test_models_do_not_follow_the_cpu_paths_or_the_core_count(tiny_data, tiny_hybrid,
                                                               tmp_path):
    pinned = _recipe_env()
    if os.uname().machine == "x86_64":
        assert pinned["ATEN_CPU_CAPABILITY"] == "avx2" and "X86_V4" in \
            pinned["NPY_DISABLE_CPU_FEATURES"]
    off = dict(pinned, NPY_DISABLE_CPU_FEATURES=AVX512_OFF, ONEDNN_MAX_CPU_ISA="AVX2",
               MKL_ENABLE_INSTRUCTIONS="AVX2")
    gmm_a, net_a = _models(tiny_data, tiny_hybrid, tmp_path / "a", pinned, 1, 1)
    gmm_c, net_c = _models(tiny_data, tiny_hybrid, tmp_path / "c", off, 2, 2)
    assert gmm_a == gmm_c and _same_net(net_a, net_c)
    if not _has_avx512():  # the libraries' own choice is AVX2 here too
        gmm_d, net_d = _models(tiny_data, tiny_hybrid, tmp_path / "d", _recipe_env(True), 2, 2)
        assert gmm_d == gmm_a and _same_net(net_d, net_a)
