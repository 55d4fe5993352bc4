"""Kaldi-compatible fbank / MFCC features, per-speaker CMVN, deltas, and a feature reader.

``compute_feats`` writes Kaldi ark/scp (``FEAT_DIR/<kind>_<set>.<job>.ark``/``.scp``, then
``DATA_DIR/feats.scp`` and ``utt2num_frames``), ``compute_cmvn`` writes per-speaker stats in
Kaldi's format (``cmvn.scp``: 2 x (D+1) float64; row 0 = sums and frame count, row 1 = sums of
squares), and ``FeatureReader`` gives utt -> float32 (T, D) with CMVN (Kaldi ``apply-cmvn``)
and deltas (Kaldi ``add-deltas``) applied, in that order, as Kaldi's recipes do.

Two backends compute the same features: ``torch`` (Kaldi's algorithm in torch, vectorized over
frames, runs on GPU tensors too; the default, 4-8x faster on one core) and
``kaldi-native-fbank`` (Kaldi's C++ code, but a per-frame Python API). With dither off they
agree to float32 rounding: measured max abs difference ~7e-5 on 40 log-mels and ~4e-4 on 13
MFCCs (C0 sums all bins); tests assert 2e-4 and 1e-3. A third, ``torchaudio``
(torchaudio.compliance.kaldi), is used where torchaudio is installed.

The configs (FbankConfig, MfccConfig: their options, defaults and where those differ from
Kaldi's) are asrkd.featconf.

Where we deviate from Kaldi:
- Audio is read as Kaldi's int16 sample values, one channel (asrkd.audio: multi-channel audio
  is refused unless a channel or a downmix is named). Digital silence (every sample 0) is
  refused by compute-feats: it has no speech to align.
- Features are stored uncompressed (Kaldi's compute-*-feats often compresses).
"""

import collections.abc
import glob
import math
import os

import kaldi_native_fbank as knf
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from asrkd.audio import parse_channel, read_audio, read_channel
from asrkd.data import DataDir, validate_data_dir
from asrkd.errors import DataDirError, UserError
from asrkd.featconf import FEATURE_CONFIG, config_from_dict, write_feature_config
from asrkd.finite import check_finite
from asrkd.jobs import run_jobs, split_evenly
from asrkd.table import ArkWriter, atomic_path, load_mat

# torch is imported by the functions that run it: reading features, CMVN and deltas are numpy,
# and the stages that only read features (compute-cmvn, validate-data-dir, the GMM stages) start
# without loading it.

BACKENDS = ("torch", "kaldi-native-fbank", "torchaudio")


# --------------------------------------------------------------------------------------------
# Computing features

def resample(samples, orig_rate, new_rate, lowpass_filter_width=6, rolloff=0.99):
    """Band-limited resampling of float32 samples (T,) from orig_rate to new_rate (Hz).

    Windowed-sinc interpolation (Hann-squared window of ``lowpass_filter_width`` zero crossings,
    cut-off at ``rolloff`` of the lower Nyquist frequency), one output phase per kernel row, run
    as a strided convolution. Output length ceil(T * new / orig).
    """
    import torch

    orig, new = int(orig_rate), int(new_rate)
    if orig <= 0 or new <= 0:
        raise UserError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if orig == new:
        return x.numpy().copy()
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = resample_width(orig, new, lowpass_filter_width, rolloff)
    idx = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (K,)
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx[None]) * base
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)  # (new, K)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernels = (sinc * window * (base / orig)).to(torch.float32)
    n = x.shape[0]
    padded = torch.nn.functional.pad(x[None, None], (width, width + orig))
    y = torch.nn.functional.conv1d(padded, kernels[:, None], stride=orig)  # (1, new, L)
    y = y[0].t().reshape(-1)
    return y[:math.ceil(new * n / orig)].numpy().copy()


def resample_width(orig_rate, new_rate, lowpass_filter_width=6, rolloff=0.99):
    """Input samples each side of an output sample that ``resample`` reads: an output at input
    position p depends on inputs p - width .. p + width + (orig / gcd) only."""
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    return math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))


def check_device(device):
    """torch.device(device), or a UserError if it is malformed or absent here."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"bad torch device {device!r} (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device}: CUDA is not available on this machine")
    return dev


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def feature_window(window_type, size, blackman_coeff=0.42):
    """Kaldi's FeatureWindowFunction: float64 (size,)."""
    n = np.arange(size, dtype=np.float64)
    a = 2 * np.pi / (size - 1)
    if window_type == "hanning":
        return 0.5 - 0.5 * np.cos(a * n)
    if window_type == "sine":
        return np.sin(0.5 * a * n)
    if window_type == "hamming":
        return 0.54 - 0.46 * np.cos(a * n)
    if window_type == "povey":
        return (0.5 - 0.5 * np.cos(a * n)) ** 0.85
    if window_type == "rectangular":
        return np.ones(size)
    if window_type == "blackman":
        return blackman_coeff - 0.5 * np.cos(a * n) + (0.5 - blackman_coeff) * np.cos(2 * a * n)
    raise UserError(f"unknown window_type {window_type!r}; use one of hanning, sine, hamming, "
                    "povey, rectangular, blackman")


def mel_banks(num_bins, padded_window_size, sample_rate, low_freq, high_freq):
    """Kaldi's MelBanks (no VTLN warping): float64 (num_bins, padded_window_size // 2), the
    triangular weight of each FFT bin below Nyquist in each mel bin."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise UserError(f"bad mel frequency range low_freq={low_freq}, high_freq={high_freq} "
                        f"(Nyquist {nyquist})")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    mel = _mel(np.arange(padded_window_size // 2) * (sample_rate / padded_window_size))
    left = mel_low + np.arange(num_bins)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    w = np.where(mel <= center, up, down)
    return np.where((mel > left) & (mel < right), w, 0.0)


def dct_matrix(num_ceps, num_mel_bins):
    """Kaldi's ComputeDctMatrix, transposed and cut to num_ceps: float64 (num_mel_bins,
    num_ceps), so that log-mels @ it gives the cepstra."""
    n = np.arange(num_mel_bins)[:, None] + 0.5
    k = np.arange(num_ceps)[None, :]
    m = np.sqrt(2.0 / num_mel_bins) * np.cos(np.pi / num_mel_bins * n * k)
    m[:, 0] = np.sqrt(1.0 / num_mel_bins)
    return m


def lifter_coeffs(num_ceps, cepstral_lifter):
    """Kaldi's ComputeLifterCoeffs: float64 (num_ceps,)."""
    q = cepstral_lifter
    return 1.0 + 0.5 * q * np.sin(np.pi * np.arange(num_ceps) / q)


class _TorchExtractor:
    """Kaldi's fbank / MFCC in torch, vectorised over an utterance's frames (runs on GPU
    tensors too). The per-utterance constants (window, mel banks, DCT) are built once, the
    frame mean / pre-emphasis / window are folded into three whole-utterance ops, and the power
    spectrum is summed inside the mel matmul. Dither (random per frame in Kaldi) and
    snip_edges=False (reflected edge frames) are not vectorised: those configs run Kaldi's own
    code (kaldi-native-fbank) per utterance."""

    def __init__(self, config, device="cpu"):
        import torch

        dev = check_device(device)
        self.torch, self.device, self.c = torch, dev, config
        c = config
        self.fallback = None
        if c.dither != 0.0 or not c.snip_edges:
            if dev.type != "cpu":
                raise UserError("dither or snip_edges: false run on CPU only (--device cpu)")
            self.fallback = _KnfExtractor(config)
        self._buf = None
        self.shift = int(c.sample_rate * c.frame_shift_ms / 1000)
        self.size = int(c.sample_rate * c.frame_length_ms / 1000)
        self.padded = 1 << (self.size - 1).bit_length() if c.round_to_power_of_two else self.size
        f32 = torch.float32
        self.window = torch.tensor(feature_window(c.window_type, self.size), dtype=f32,
                                   device=dev)
        banks = mel_banks(c.num_mel_bins, self.padded, float(c.sample_rate), c.low_freq,
                          c.high_freq)
        # Kaldi's banks ignore the Nyquist bin. Each bin's row is repeated for the real and the
        # imaginary part, so (re, im interleaved)^2 @ banks2 sums re^2 + im^2 inside the matmul.
        self.banks2 = torch.tensor(banks.T, dtype=f32, device=dev).repeat_interleave(
            2, dim=0).contiguous()
        self.eps = torch.tensor(torch.finfo(f32).eps, dtype=f32, device=dev)
        if c.kind == "mfcc":
            self.dct = torch.tensor(dct_matrix(c.num_ceps, c.num_mel_bins), dtype=f32,
                                    device=dev)
            self.lifter = (torch.tensor(lifter_coeffs(c.num_ceps, c.cepstral_lifter),
                                        dtype=f32, device=dev)
                           if c.cepstral_lifter != 0.0 else None)

    def __call__(self, samples):
        if self.fallback is not None:
            return self.fallback(samples)
        torch = self.torch
        with torch.inference_mode():
            w = torch.from_numpy(samples).to(self.device)
            return self._features(w).cpu().numpy()

    def _log_energy(self, frames):
        torch, c = self.torch, self.c
        e = torch.maximum(frames.square().sum(1), self.eps).log()
        if c.energy_floor > 0.0:
            e = torch.clamp(e, min=float(np.log(c.energy_floor)))
        return e

    def _features(self, w):
        torch, c = self.torch, self.c
        n_frames = 0 if len(w) < self.size else 1 + (len(w) - self.size) // self.shift
        if n_frames == 0:
            return torch.empty((0, c.dim))
        size, shift, pre = self.size, self.shift, c.preemphasis
        starts = torch.arange(n_frames, device=w.device) * shift
        # Kaldi per frame: remove the frame's mean, pre-emphasize (first sample against
        # itself), window. All three are linear, so the mean term becomes one outer product
        # and the pre-emphasis is done once on the whole signal.
        z = torch.empty_like(w)
        z[1:] = w[1:] - pre * w[:-1]
        # The FFT input buffer is kept between calls: its zero padding columns stay zero, and
        # a fresh multi-MB allocation per utterance costs page faults comparable to the FFT.
        if self._buf is None or len(self._buf) < n_frames:
            self._buf = torch.zeros((max(n_frames, 2000), self.padded), device=w.device)
        buf = self._buf[:n_frames]
        torch.mul(z.as_strided((n_frames, size), (shift, 1)), self.window, out=buf[:, :size])
        buf[:, 0] = w[starts] * ((1.0 - pre) * self.window[0])
        energy = None
        if c.remove_dc_offset or c.use_energy:
            frames = w.as_strided((n_frames, size), (shift, 1))
            # frame means from one float64 cumulative sum: O(samples), not O(frames * size)
            cs = torch.zeros(len(w) + 1, dtype=torch.float64, device=w.device)
            torch.cumsum(w, 0, dtype=torch.float64, out=cs[1:])
            mean = ((cs[starts + size] - cs[starts]) / size).float()
            if c.use_energy and c.raw_energy:
                # raw energy: after the mean removal, before pre-emphasis and window
                raw = frames - mean.unsqueeze(1) if c.remove_dc_offset else frames
                energy = self._log_energy(raw)
            if c.remove_dc_offset:
                buf[:, :size].addr_(mean, self.window, alpha=-(1.0 - pre))
            if c.use_energy and not c.raw_energy:
                energy = self._log_energy(buf)
        spec = torch.view_as_real(torch.fft.rfft(buf))[:, : self.padded // 2]
        if c.kind == "fbank" and not c.use_power:
            mel = spec.square().sum(-1).sqrt() @ self.banks2[::2]
        else:
            z = spec.reshape(len(spec), -1)  # (T, padded): re, im of bins 0 .. padded/2 - 1
            mel = (z * z) @ self.banks2
        if c.kind == "fbank" and not c.use_log_fbank:
            out = mel
        else:
            out = torch.maximum(mel, self.eps).log()
        if c.kind == "mfcc":
            out = out @ self.dct
            if self.lifter is not None:
                out *= self.lifter
            if energy is not None:
                out[:, 0] = energy
        elif energy is not None:
            out = torch.cat((energy.unsqueeze(1), out), dim=1)
        return out


class _TorchaudioExtractor:
    """``torchaudio.compliance.kaldi.fbank`` / ``mfcc`` called per utterance: a third
    implementation to check the others against (torchaudio is not a dependency; install it
    beside a matching torch build)."""

    def __init__(self, config, device="cpu"):
        import torch

        try:  # not a dependency: imported only when this backend is asked for
            import torchaudio.compliance.kaldi as tak
        except (ImportError, OSError) as e:
            raise UserError(f"the torchaudio backend needs a torchaudio that imports beside "
                            f"torch {torch.__version__}: {e}") from None
        self.torch, self.device = torch, check_device(device)
        c = config
        common = dict(
            sample_frequency=c.sample_rate, frame_length=c.frame_length_ms,
            frame_shift=c.frame_shift_ms, dither=c.dither,
            preemphasis_coefficient=c.preemphasis, remove_dc_offset=c.remove_dc_offset,
            window_type=c.window_type, round_to_power_of_two=c.round_to_power_of_two,
            snip_edges=c.snip_edges, num_mel_bins=c.num_mel_bins, low_freq=c.low_freq,
            high_freq=c.high_freq, use_energy=c.use_energy, energy_floor=c.energy_floor,
            raw_energy=c.raw_energy,
        )
        if c.kind == "fbank":
            self.fn, self.kw = tak.fbank, dict(
                common, use_log_fbank=c.use_log_fbank, use_power=c.use_power)
        else:
            self.fn, self.kw = tak.mfcc, dict(
                common, num_ceps=c.num_ceps, cepstral_lifter=c.cepstral_lifter)

    def __call__(self, samples):
        torch = self.torch
        with torch.inference_mode():
            w = torch.from_numpy(samples).to(self.device).unsqueeze(0)
            return self.fn(w, **self.kw).cpu().numpy()


class _KnfExtractor:
    def __init__(self, config, device="cpu"):
        if device != "cpu":
            raise UserError("the kaldi-native-fbank backend runs on CPU only (--device cpu)")
        c = config
        opts = knf.FbankOptions() if c.kind == "fbank" else knf.MfccOptions()
        fo = opts.frame_opts
        fo.samp_freq = c.sample_rate
        fo.frame_length_ms, fo.frame_shift_ms = c.frame_length_ms, c.frame_shift_ms
        fo.dither, fo.preemph_coeff = c.dither, c.preemphasis
        fo.remove_dc_offset, fo.window_type = c.remove_dc_offset, c.window_type
        fo.round_to_power_of_two, fo.snip_edges = c.round_to_power_of_two, c.snip_edges
        mo = opts.mel_opts
        mo.num_bins, mo.low_freq, mo.high_freq = c.num_mel_bins, c.low_freq, c.high_freq
        opts.use_energy, opts.energy_floor, opts.raw_energy = (
            c.use_energy, c.energy_floor, c.raw_energy)
        if c.kind == "fbank":
            opts.use_log_fbank, opts.use_power = c.use_log_fbank, c.use_power
            self.cls = knf.OnlineFbank
        else:
            opts.num_ceps, opts.cepstral_lifter = c.num_ceps, c.cepstral_lifter
            self.cls = knf.OnlineMfcc
        self.opts, self.config = opts, c

    def online(self):
        """A fresh kaldi-native-fbank online extractor: accept_waveform(rate, block) as the
        blocks come, frames as they are ready (the frames of __call__ on the whole)."""
        return self.cls(self.opts)

    def __call__(self, samples):
        f = self.cls(self.opts)
        f.accept_waveform(self.config.sample_rate, samples)
        f.input_finished()
        n = f.num_frames_ready
        out = np.empty((n, self.config.dim), dtype=np.float32)
        for i in range(n):
            out[i] = f.get_frame(i)
        return out


def make_extractor(config, backend="torch", device="cpu"):
    """A callable: float32 samples (int16 range) -> float32 (T, D) features."""
    if backend == "torch":
        return _TorchExtractor(config, device)
    if backend == "torchaudio":
        return _TorchaudioExtractor(config, device)
    if backend == "kaldi-native-fbank":
        return _KnfExtractor(config, device)
    raise UserError(f"unknown feature backend {backend!r}; use one of {list(BACKENDS)}")


def compute_features(samples, config, backend="torch", device="cpu"):
    """Features of one waveform (float samples in int16 range): float32 (T, D)."""
    return make_extractor(config, backend, device)(np.asarray(samples, dtype=np.float32))


def _feats_job(items, ark, scp, config_dict, backend, device, channel=None):
    """One job: features for ``items`` [(utt, audio path)] into ark/scp; returns utt -> frames."""
    import torch

    # One thread per job: the per-utterance ops are too small to gain from more, and idle
    # OpenMP threads spin, which on a shared machine made one job 3-8x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _feats_job_body(items, ark, scp, config_dict, backend, device, channel)
    finally:
        torch.set_num_threads(threads)


def _feats_job_body(items, ark, scp, config_dict, backend, device, channel):
    config = config_from_dict(config_dict)
    extract = make_extractor(config, backend, device)
    frames = {}
    with ArkWriter(ark, scp) as w:
        for utt, path, dur in items:
            try:
                x, sr = read_audio(path, channel)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - libsndfile raises several types
                why = (str(e).splitlines() or [type(e).__name__])[0]
                why = why.replace(f"Error opening {path!r}: ", "")  # the path is named already
                raise UserError(f"{utt}: {path}: cannot decode audio ({why}); rerun "
                                "prepare-data to leave it out") from None
            check_finite(x, f"{utt}: audio {path}", "rerun prepare-data to leave it out")
            if not x.any():
                raise UserError(f"{utt}: {path} is digital silence (every sample 0): no speech "
                                "to align; rerun prepare-data to leave it out")
            if sr != config.sample_rate:
                raise UserError(f"{utt}: {path} has sample rate {sr}, config says "
                                f"{config.sample_rate}")
            if dur is not None and abs(len(x) / sr - dur) > 0.01:
                raise UserError(f"{utt}: {path} is {len(x) / sr:g} s long but utt2dur says "
                                f"{dur:g} s: the audio changed after prepare-data; rerun it")
            feats = extract(x)
            if feats.shape[0] == 0:
                raise UserError(f"{utt}: {path} is too short for one frame")
            check_finite(feats, f"{utt}: {config.kind} features of {path}")
            w[utt] = feats
            frames[utt] = feats.shape[0]
    print(f"{len(frames)} utterances, {sum(frames.values())} frames")
    return frames


def compute_feats(data_dir, feat_dir, config, nj=1, backend="torch", device="cpu", channel=None):
    """Compute features for every utterance of ``data_dir`` in ``nj`` jobs.

    Writes ``feat_dir/<kind>_<set>.<job>.ark/.scp`` (each atomically), then
    ``data_dir/feats.scp`` and ``data_dir/utt2num_frames``; logs go to ``feat_dir/log``.
    Old feats.scp / utt2num_frames / cmvn.scp are removed first, so a failed run leaves a
    data dir without features rather than with stale or partial ones; audio whose length
    differs from utt2dur (changed since preparation) is an error. ``channel`` (read_audio)
    is recorded in ``data_dir/channel``. Returns the number of frames written.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown feature backend {backend!r}; use one of {list(BACKENDS)}")
    if backend == "kaldi-native-fbank" and device != "cpu":
        raise UserError("the kaldi-native-fbank backend runs on CPU only (--device cpu)")
    if device != "cpu":
        check_device(device)
    d = validate_data_dir(data_dir, need=("wav.scp", "utt2spk", "spk2utt"))
    channel = parse_channel(channel)
    for stale in ("feats.scp", "utt2num_frames", "cmvn.scp", FEATURE_CONFIG, "channel"):
        if d.has(stale):
            os.unlink(d.file(stale))
    feat_dir = os.path.abspath(os.fspath(feat_dir))
    os.makedirs(feat_dir, exist_ok=True)
    name = f"{config.kind}_{os.path.basename(os.path.normpath(d.path))}"
    # Temp files of a killed earlier run (never renamed into place, so never trusted).
    for tmp in glob.glob(os.path.join(feat_dir, f".{name}.*.tmp")):
        os.unlink(tmp)
    wav = d.wav
    dur = d.utt2dur if d.has("utt2dur") else {}  # what prepare-data measured: checked
    # Sorted contiguous chunks keep each job's scp sorted, so concatenation stays sorted.
    chunks = [c for c in split_evenly(sorted(wav), max(1, nj)) if c]
    jobs = []
    for i, chunk in enumerate(chunks, 1):
        ark = os.path.join(feat_dir, f"{name}.{i}.ark")
        jobs.append(([(u, wav[u], dur.get(u)) for u in chunk], ark, ark[:-4] + ".scp",
                     config.to_dict(), backend, device, channel))
    results = run_jobs(_feats_job, jobs, nj, os.path.join(feat_dir, "log"), f"make_{name}",
                       desc=f"compute-feats {name}")
    # Archives of an earlier run with more jobs are no longer referenced: remove them.
    current = {j[1] for j in jobs} | {j[2] for j in jobs}
    for old in glob.glob(os.path.join(feat_dir, f"{name}.*.ark")) + glob.glob(
            os.path.join(feat_dir, f"{name}.*.scp")):
        if old not in current:
            os.unlink(old)
    frames = {}
    for r in results:
        frames.update(r)
    with atomic_path(d.file("utt2num_frames")) as tmp, open(tmp, "w") as f:
        f.writelines(f"{u} {n}\n" for u, n in sorted(frames.items()))
    write_feature_config(d.path, config)  # what checkpoints trained on these features record
    if channel is not None:
        with atomic_path(d.file("channel")) as tmp, open(tmp, "w") as f:
            f.write(f"{channel}\n")
    # feats.scp last: its presence is what later stages trust.
    with atomic_path(d.file("feats.scp")) as tmp, open(tmp, "w") as f:
        for j in jobs:
            with open(j[2]) as s:
                f.write(s.read())
    return sum(frames.values())


# --------------------------------------------------------------------------------------------
# CMVN

def _read_feats(spec):
    return load_mat(spec)


def compute_cmvn(data_dir):
    """Per-speaker CMVN stats (Kaldi ``compute-cmvn-stats --spk2utt``) -> data_dir/cmvn.scp.

    The archive goes next to the feature archives as ``cmvn_<set>.ark``. Returns the number of
    speakers.
    """
    d = validate_data_dir(data_dir, need=("feats.scp", "utt2spk", "spk2utt"), check_audio=False)
    feats = d.table("feats.scp")
    first_ark = next(iter(feats.values())).rpartition(":")[0]
    name = os.path.basename(os.path.normpath(d.path))
    ark = os.path.join(os.path.dirname(os.path.abspath(first_ark)), f"cmvn_{name}.ark")
    spk2utt = d.spk2utt
    with ArkWriter(ark, d.file("cmvn.scp")) as w:
        for spk in tqdm(sorted(spk2utt), desc="compute-cmvn", unit="spk", disable=None):
            stats = None
            for utt in spk2utt[spk]:
                x = _read_feats(feats[utt]).astype(np.float64)
                # one bad utterance would make every utterance of its speaker NaN
                check_finite(x, f"{feats[utt]}: utterance {utt} (speaker {spk})",
                             "recompute its features")
                if stats is None:
                    stats = np.zeros((2, x.shape[1] + 1), dtype=np.float64)
                stats[0, :-1] += x.sum(axis=0)
                stats[1, :-1] += np.einsum("td,td->d", x, x)
                stats[0, -1] += x.shape[0]
            w[spk] = stats
    return len(spk2utt)


def cmvn_transform(stats, norm_vars):
    """(scale, offset) such that ``feats * scale + offset`` is Kaldi's apply-cmvn."""
    stats = np.asarray(stats, dtype=np.float64)
    count = stats[0, -1]
    if count < 1.0:
        raise DataDirError(f"CMVN stats with frame count {count}")
    mean = stats[0, :-1] / count
    if norm_vars:
        var = stats[1, :-1] / count - mean * mean
        var = np.maximum(var, 1.0e-20)  # Kaldi floors the variance the same way
        scale = 1.0 / np.sqrt(var)
    else:
        scale = np.ones_like(mean)
    return scale.astype(np.float32), (-mean * scale).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Deltas

def delta_scales(order, window):
    """Kaldi's DeltaFeatures filter taps: list of arrays, one per order 0..order."""
    scales = [np.array([1.0])]
    norm = float(sum(j * j for j in range(-window, window + 1)))
    for _ in range(order):
        prev = scales[-1]
        cur = np.zeros(len(prev) + 2 * window)
        for j in range(-window, window + 1):
            cur[j + window: j + window + len(prev)] += j * prev
        scales.append(cur / norm)
    return scales


def add_deltas(feats, order=2, window=2):
    """Kaldi ``add-deltas``: (T, D) -> (T, D * (order + 1)), frames clamped at the edges."""
    feats = np.asarray(feats, dtype=np.float32)
    if order == 0:
        return feats
    t, dim = feats.shape
    if t == 0:
        return np.zeros((0, dim * (order + 1)), dtype=np.float32)
    half = order * window
    taps = np.zeros((2 * half + 1, order + 1), dtype=np.float32)  # (K, order + 1)
    for i, s in enumerate(delta_scales(order, window)):
        h = (len(s) - 1) // 2
        taps[half - h: half + h + 1, i] = s
    idx = np.clip(np.arange(-half, t + half), 0, max(t - 1, 0))
    win = sliding_window_view(feats[idx], 2 * half + 1, axis=0)  # (T, D, K) view
    out = np.ascontiguousarray((win @ taps).transpose(0, 2, 1)).reshape(t, -1)
    out[:, :dim] = feats  # exact copy of the statics
    return out


# --------------------------------------------------------------------------------------------
# Reading

class FeatureReader(collections.abc.Mapping):
    """utt -> np.float32 (T, D') features of a data dir, with per-speaker CMVN and deltas.

    ``cmvn``: None, "mean" (Kaldi apply-cmvn) or "meanvar" (apply-cmvn --norm-vars=true).
    ``deltas``: delta order (0 = none; 2 gives D' = 3 D), window 2, applied after CMVN.
    Every matrix read is checked against utt2num_frames.
    """

    def __init__(self, data_dir, cmvn="mean", deltas=0):
        if cmvn not in (None, "mean", "meanvar"):
            raise UserError(f"cmvn must be None, 'mean' or 'meanvar', got {cmvn!r}")
        self.data = DataDir(data_dir)
        if not self.data.has("feats.scp"):
            raise DataDirError(f"{self.data.path}: missing feats.scp; run compute-feats")
        self._scp = self.data.table("feats.scp")
        self._frames = self.data.utt2num_frames if self.data.has("utt2num_frames") else None
        if self._frames is not None and set(self._frames) != set(self._scp):
            raise DataDirError(f"{self.data.path}: feats.scp and utt2num_frames list different "
                               "utterances; rerun compute-feats")
        self.utts = sorted(self._scp)
        self.cmvn, self.deltas = cmvn, int(deltas)
        self._transform = {}
        if cmvn is not None:
            if not self.data.has("cmvn.scp"):
                raise DataDirError(f"{self.data.path}: missing cmvn.scp; run compute-cmvn")
            self._utt2spk = self.data.utt2spk
            for spk, spec in self.data.table("cmvn.scp").items():
                stats = check_finite(load_mat(spec), f"{self.data.file('cmvn.scp')}: "
                                     f"CMVN stats of speaker {spk}", "rerun compute-cmvn")
                self._transform[spk] = cmvn_transform(stats, cmvn == "meanvar")
            missing = {self._utt2spk.get(u) for u in self.utts} - set(self._transform)
            if missing:
                raise DataDirError(f"{self.data.path}: cmvn.scp lacks speaker(s) "
                                   f"{sorted(map(str, missing))[:3]}; rerun compute-cmvn")

    def raw(self, utt):
        """Stored features, no CMVN or deltas."""
        x = _read_feats(self._scp[utt])
        check_finite(x, f"{self._scp[utt]}: features of {utt}", "recompute them")
        if self._frames is not None and x.shape[0] != self._frames[utt]:
            raise DataDirError(f"{self.data.path}: {utt} has {x.shape[0]} frames in feats.scp "
                               f"but {self._frames[utt]} in utt2num_frames")
        return x

    def __getitem__(self, utt):
        x = self.raw(utt)
        if self.cmvn is not None:
            scale, offset = self._transform[self._utt2spk[utt]]
            x = x * scale + offset
        if self.deltas:
            x = add_deltas(x, self.deltas)
        return np.asarray(x, dtype=np.float32)

    def __iter__(self):
        return iter(self.utts)

    def __len__(self):
        return len(self.utts)

    def __contains__(self, utt):
        return utt in self._scp

    @property
    def dim(self):
        return self.raw(self.utts[0]).shape[1] * (self.deltas + 1)

    def num_frames(self, utt):
        return self._frames[utt] if self._frames is not None else self.raw(utt).shape[0]


def check_feature_values(data_dir):
    """Read every feature matrix and CMVN stat of a data dir that validate_data_dir passed
    (``validate-data-dir --values``): NaN/Inf, frame counts against utt2num_frames. A pass over
    all the features."""
    d = DataDir(data_dir)
    if not d.has("feats.scp"):
        return
    reader = FeatureReader(d.path, cmvn="mean" if d.has("cmvn.scp") else None)
    for utt in tqdm(reader.utts, desc="validate values", unit="utt", disable=None):
        reader.raw(utt)  # NaN/Inf and frame counts are checked on every read


def check_feature_config(config, data_dir, atol=1e-3):
    """UserError unless ``config`` recomputes DATA_DIR's stored features (its first utterance,
    from its audio): the check that a model trained on DATA_DIR is fed the same features.
    Returns False (and checks nothing) when the data dir or its audio is not there."""
    d = DataDir(data_dir) if data_dir and os.path.isdir(data_dir) else None
    if d is None or not d.has("feats.scp") or not d.has("wav.scp"):
        return False
    utt, spec = next(iter(d.table("feats.scp").items()))
    path = d.wav.get(utt)
    if path is None or not os.path.isfile(path):
        return False
    x, sr = read_audio(path, read_channel(d))
    stored = _read_feats(spec)
    if sr != config.sample_rate or config.dim != stored.shape[1]:
        raise UserError(f"{data_dir} was computed at {sr} Hz with {stored.shape[1]}-dim "
                        f"features; the feature config gives {config.sample_rate} Hz, "
                        f"{config.dim} dims: pass the config it was computed with")
    ours = make_extractor(config)(x)
    if ours.shape != stored.shape or np.abs(ours - stored).max() > atol:
        raise UserError(f"the feature config does not reproduce {data_dir}'s features "
                        f"({utt}): pass the config they were computed with (--feat-conf)")
    return True
