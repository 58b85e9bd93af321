"""Small file helpers: atomic writes, the cache folder, checksums, JSON beside outputs."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class WavescoreError(Exception):
    """An error a user can act on: the message says what was wrong and what to do."""


def cache_dir() -> Path:
    """The user cache folder; ``WAVESCORE_CACHE`` overrides it."""
    env = os.environ.get("WAVESCORE_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "wavescore"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left beside it.

    :func:`atomic_path` names its temporary ``.<name>.<pid>.<random>.tmp``; one whose writing
    process no longer runs on this machine can never be renamed into place. Returns what it removed.
    """
    path = Path(path)
    prefix = "." + path.name + "."
    removed = []
    try:
        candidates = list(path.parent.glob(glob.escape(prefix) + "*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success.

    An interrupted run therefore never leaves a half-written file under the final name; the
    temporary carries the writer's pid, so the next write to ``path`` removes what a killed
    writer left (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    if not path.name:
        raise WavescoreError(f"cannot write to {str(path)!r}: give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (numbers as plain floats, keys in order).

    NaN and infinities are not JSON: they are written as ``null``, so every reader parses the file.
    """
    text = json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside tensors and arrays) replaced by None."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if obj is None or isinstance(obj, (str, int)):
        return obj
    try:
        return finite_json(_json_default(obj))
    except TypeError:
        return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        raise TypeError(type(o))
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_archive(path: str | os.PathLike, header: dict, arrays: dict) -> Path:
    """A machine file: a JSON header plus named float arrays in one .npz, written atomically."""
    import numpy as np

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return path


def read_archive(path: str | os.PathLike, fmt: str, version, what: str, hint: str) -> tuple[dict, dict]:
    """(header, {name: torch tensor}) of a file written by :func:`write_archive` (``version``: the
    version this reader takes, or a tuple of them); every failure
    (missing, foreign, other format or version, truncated, corrupt) is a WavescoreError that
    ends with ``hint``."""
    import zipfile

    import numpy as np
    import torch

    path = Path(path)
    if not path.exists():
        raise WavescoreError(f"no machine file at {path}: {hint}")
    if not zipfile.is_zipfile(path):
        raise WavescoreError(f"{path} is not a wavescore machine (not a .wsm archive; truncated or foreign file): {hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header.get("format") != fmt:
                raise WavescoreError(f"{path} is not a {what} (format {header.get('format')!r})")
            versions = version if isinstance(version, tuple) else (version,)
            if header.get("version") not in versions:
                raise WavescoreError(f"{path} has {what} format version {header.get('version')}, "
                                     f"this wavescore reads version {' or '.join(map(str, versions))}: {hint}")
            arrays = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "header"}
    except WavescoreError:
        raise
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        raise WavescoreError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}): {hint}") from None
    return header, arrays


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar on a terminal; nothing when ``enabled`` is False or stderr is not a terminal,
    so logs and CI output get no carriage-return redraws. ``WAVESCORE_PROGRESS=1`` forces it on."""
    import sys

    from tqdm.auto import tqdm

    forced = os.environ.get("WAVESCORE_PROGRESS") == "1"
    tty = forced or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(iterable, disable=not (enabled and tty), **kwargs)


def load_archive(path: str | os.PathLike, fmt: str, version: int, what: str, hint: str, build):
    """:func:`read_archive`, then ``build(path, header, arrays, hint)``: any failure to rebuild the
    object (a header of other types, arrays of other lengths than the configuration implies) is
    one WavescoreError naming the file, never a traceback from deep inside the constructor."""
    path = Path(path)
    header, arrays = read_archive(path, fmt, version, what, hint)
    try:
        return build(path, header, arrays, hint)
    except WavescoreError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise WavescoreError(f"{path} is corrupt ({type(exc).__name__}: {exc}): {hint}") from None
