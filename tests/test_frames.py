"""The frame cache: windows clamped per utterance, CMVN applied, streamed .npy writes, pages
handed back."""

import numpy as np
import pytest

from asrkd.frames import NpyRowWriter, build_frame_cache, release_pages
from test_train import make_corpus


def test_window_gather_clamps_at_utterance_edges(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"), num_spk=2, utts_per_spk=2)
    cache = build_frame_cache(data, ali, str(tmp_path / "frames"))
    start, end = cache.offsets[1], cache.offsets[2]  # second utterance
    win = cache.windows(np.array([start, end - 1]), 2, 1)
    feats = np.asarray(cache.feats)
    np.testing.assert_array_equal(win[0], feats[[start, start, start, start + 1]])
    np.testing.assert_array_equal(win[1], feats[[end - 3, end - 2, end - 1, end - 1]])
    # CMVN (meanvar) was applied per speaker.
    spk0 = feats[cache.offsets[0]:cache.offsets[2]]
    np.testing.assert_allclose(spk0.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(spk0.std(0), 1, atol=1e-3)


def test_npy_row_writer_streams_rows_and_zero_fills(tmp_path):
    path = tmp_path / "a.npy"
    w = NpyRowWriter(path, np.float32, (7, 3))
    w.write(np.ones((2, 3)))
    w.skip_to(4)
    w.write(np.full((1, 3), 5.0))
    with pytest.raises(ValueError, match="do not fit"):
        w.write(np.ones((3, 3)))
    w.close()
    a = np.load(path, mmap_mode="r")
    want = np.zeros((7, 3), np.float32)
    want[:2], want[4] = 1, 5
    assert a.dtype == np.float32 and np.array_equal(a, want)


def _rss_file_kb():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("RssFile"))


def test_released_pages_leave_the_resident_set(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((4096, 1024), np.float32))  # 16 MB
    a = np.load(path, mmap_mode="r")
    before = _rss_file_kb()
    assert float(a[::64].sum()) == 64 * 1024  # touches every page
    touched = _rss_file_kb()
    release_pages(a)
    assert touched - before > 12_000  # the mapping was resident ...
    assert _rss_file_kb() - before < 2_000  # ... and is no longer
    assert float(a[::64].sum()) == 64 * 1024  # still readable (from the page cache)
