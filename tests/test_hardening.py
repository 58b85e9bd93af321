"""Issue 13: no silent wrong results, nothing lost, nothing left behind."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, load_dataset
from wavescore._io import WavescoreError, atomic_path, read_archive, write_archive, write_json
from wavescore.cli import main
from wavescore.evaluation import psnr


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", "test")


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("family,degree", [("local", 1), ("local", 2), ("independent", 3), ("parent", 2)])
def test_huge_sigma_reaches_the_gaussian_limit(digits, family, degree):
    """At sigma >> data scale every machine's denoiser is the data mean; a ridge relative to the
    noisy moments biased the shrinkage by 1e-6 relative: MSE 1e4 at sigma 1e8 instead of 0.29."""
    train, test = digits
    m = ScoreMachine(family=family, degree=degree).fit(train, progress=False)
    limit = float(((test.double() - train.double().mean(0)) ** 2).mean())
    z = torch.randn(test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (1e6, 1e7, 1e8):
        mse = float(((m.denoise(test.double() + s * z, s) - test.double()) ** 2).mean())
        assert abs(mse - limit) < 1e-3 * limit, (s, mse, limit)


def test_constructor_refuses_non_finite_and_missing_devices():
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(WavescoreError, match="ridge"):
            ScoreMachine(ridge=bad)
    with pytest.raises(WavescoreError, match="wavelet"):
        ScoreMachine(wavelet="")
    with pytest.raises(WavescoreError, match="device"):
        ScoreMachine(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(WavescoreError, match="no CUDA device"):
            ScoreMachine(device="cuda")


def test_psnr_of_a_broken_model_is_not_infinite():
    assert np.isnan(psnr(float("nan"))) and psnr(4.0) == 0.0


def test_json_outputs_are_strict_json(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"mse": [float("nan"), 1.0], "psnr": np.float64("inf"), "t": torch.tensor([float("-inf"), 2.0])})

    def refuse(token):
        raise AssertionError(f"non-JSON constant {token}")
    assert json.loads(path.read_text(), parse_constant=refuse) == {"mse": [None, 1.0], "psnr": None, "t": [None, 2.0]}


# ------------------------------------------------------------------ files
def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    target = tmp_path / "m.wsm"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.wsm.{dead.pid}.abcd1234.tmp"
    live = tmp_path / f".m.wsm.{os.getppid()}.efgh5678.tmp"  # a writer that still runs
    other = tmp_path / f".n.wsm.{dead.pid}.abcd1234.tmp"  # another target's
    for p in (stale, live, other):
        p.write_bytes(b"half")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and live.exists() and other.exists()


def test_killed_fit_leaves_no_description_of_another_machine(tmp_path, monkeypatch, capsys):
    """A kill between writing the machine and its JSON must not leave the old JSON beside the new machine."""
    import wavescore._io as io

    wsm = tmp_path / "m.wsm"
    assert main(["fit", "--data", "digits", "--family", "gaussian", "-o", str(wsm)]) == 0
    old = json.loads((tmp_path / "m.wsm.json").read_text())
    assert old["name"] == "gaussian-P1" and old["machine_sha256"] == io.sha256_file(wsm)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(io, "write_json", killed)
    assert main(["fit", "--data", "digits", "--family", "local", "-o", str(wsm)]) == 130
    assert ScoreMachine.load(wsm).name == "local-r1-P1"
    assert not (tmp_path / "m.wsm.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.wsm"]


def test_image_grids_follow_the_suffix(tmp_path, capsys):
    from PIL import Image

    wsm = tmp_path / "m.wsm"
    assert main(["fit", "--data", "digits", "-o", str(wsm)]) == 0
    for suffix, fmt in ((".jpg", "JPEG"), (".png", "PNG")):
        out = tmp_path / f"s{suffix}"
        assert main(["sample", "--model", str(wsm), "-n", "4", "--steps", "3", "-o", str(out)]) == 0
        with Image.open(out) as im:
            assert im.format == fmt


def test_two_models_with_one_name_keep_both_columns(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a.wsm", tmp_path / "b" / "a.wsm"
    assert main(["fit", "--data", "digits", "--family", "local", "-o", str(a)]) == 0
    assert main(["fit", "--data", "digits", "--family", "local", "--limit", "300", "-o", str(b)]) == 0
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(a), str(b), "--data", "digits", "--sigmas", "0.5", "-o", str(out)]) == 0
    models = json.loads(out.read_text())["models"]
    assert len(models) == 2 and all(str(p) in name for p, name in zip((a, b), models))
    mse = [v["mse"][0] for v in models.values()]
    assert mse[0] != mse[1]  # two different fits, both reported
    cmp = tmp_path / "cmp"
    assert main(["compare", "--models", str(a), str(b), "empirical", "--data", "digits", "-n", "20", "--sigmas", "0.5",
                 "-o", str(cmp)]) == 0
    rows = json.loads((cmp / "compare.json").read_text())["r2"]["empirical"]
    assert len(rows) == 2 and all(str(p) in name for p, name in zip((a, b), rows))


def test_progress_bars_stay_out_of_logs(tmp_path):
    """stderr redirected to a file: no carriage-return redraws."""
    run = subprocess.run([sys.executable, "-m", "wavescore.cli", "fit", "--data", "digits", "-o",
                          str(tmp_path / "m.wsm")], capture_output=True, text=True)
    assert run.returncode == 0 and "\r" not in run.stderr and "batch/s" not in run.stderr


# ------------------------------------------------------------------ machine files
def _rewrite(src, dst, edit_header=None, edit_arrays=None):
    header, arrays = read_archive(src, "wavescore-machine", 1, "machine", "")
    if edit_header:
        edit_header(header)
    arrays = {k: v.numpy() for k, v in arrays.items()}
    if edit_arrays:
        edit_arrays(arrays)
    write_archive(dst, header, arrays)


def test_machine_saved_on_a_gpu_loads_on_a_cpu(tmp_path, digits):
    m = ScoreMachine(family="local", degree=2).fit(digits[0], progress=False)
    m.save(tmp_path / "cpu.wsm")
    _rewrite(tmp_path / "cpu.wsm", tmp_path / "gpu.wsm", lambda h: h["params"].update(device="cuda:0"))
    loaded = ScoreMachine.load(tmp_path / "gpu.wsm")
    if not torch.cuda.is_available():
        assert loaded.device == "cpu"
    x = digits[1][:8]
    assert torch.equal(loaded.denoise(x, 0.3).cpu(), m.denoise(x, 0.3))


@pytest.mark.parametrize("damage", [
    ("header", lambda h: h.update(shape="32x32")),
    ("header", lambda h: h.update(groups="many")),
    ("header", lambda h: h["params"].update(degree="two")),
    ("header", lambda h: h["params"].update(ridge=None)),
    ("header", lambda h: h.update(params=[1, 2])),
    ("header", lambda h: h.update(choice={"sigmas": [0.1], "candidates": [], "best": [3]})),
    ("arrays", lambda a: a.update(shift=a["shift"][:5])),
    ("arrays", lambda a: a.update(gram0=a["gram0"][..., :-1])),
    ("arrays", lambda a: a["scale"].__setitem__(0, np.nan)),
    ("arrays", lambda a: a.pop("gram0")),
])
def test_damaged_machine_files_give_one_line(tmp_path, digits, damage):
    m = ScoreMachine(family="local", degree=1).fit(digits[0][:200], progress=False)
    m.save(tmp_path / "m.wsm")
    where, edit = damage
    _rewrite(tmp_path / "m.wsm", tmp_path / "bad.wsm", **({"edit_header": edit} if where == "header" else
                                                          {"edit_arrays": edit}))
    with pytest.raises(WavescoreError) as info:
        ScoreMachine.load(tmp_path / "bad.wsm")
    assert "\n" not in str(info.value) and "bad.wsm" in str(info.value)

