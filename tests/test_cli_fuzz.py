"""Every subcommand with each class of bad argument: exit status 2, one line on stderr, no
traceback, no input changed and no file left behind (issue 13)."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from wavescore import ScoreMachine, load_dataset
from wavescore.cli import main


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder of inputs: a machine, a network, samples, data, and corrupt and foreign files."""
    from wavescore.networks import train

    d = tmp_path_factory.mktemp("fuzz")
    x = load_dataset("digits", limit=64)
    ScoreMachine(family="local", degree=1).fit(load_dataset("digits"), progress=False).save(d / "m.wsm")
    train("cnn", x, epochs=1, out=d / "net.pt", batch_size=32, progress=False, arch_kwargs={"width": 8, "depth": 2})
    np.savez(d / "s.npz", samples=x[:16].numpy())
    np.save(d / "data.npy", x.numpy())
    raw = (d / "m.wsm").read_bytes()
    (d / "trunc.wsm").write_bytes(raw[: len(raw) // 2])
    (d / "junk.wsm").write_bytes(os.urandom(300))
    (d / "junk.pt").write_bytes(os.urandom(300))
    (d / "junk.npz").write_bytes(os.urandom(300))
    (d / "junk.npy").write_bytes(b"\x93NUMPY" + os.urandom(50))
    (d / "notes.wsm").write_text("my notes, not a machine\n")
    (d / "evaluation.json").write_text('{"mine": 1}\n')
    (d / "afile").write_text("a file, not a folder\n")
    return d


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


GOOD_FIT = ["fit", "--data", "digits", "-o", "new.wsm"]
CASES = {
    # numbers out of range, NaN and infinities
    "fit ridge nan": ["fit", "--data", "digits", "--ridge", "nan", "-o", "new.wsm"],
    "fit ridge inf": ["fit", "--data", "digits", "--ridge", "inf", "-o", "new.wsm"],
    "fit ridge negative": ["fit", "--data", "digits", "--ridge", "-1", "-o", "new.wsm"],
    "fit workers -1": ["fit", "--data", "digits", "--workers", "-1", "-o", "new.wsm"],
    "fit workers 0": ["fit", "--data", "digits", "--workers", "0", "-o", "new.wsm"],
    "fit shards 0": ["fit", "--data", "digits", "--workers", "1", "--shards", "0", "-o", "new.wsm"],
    "fit limit 0": ["fit", "--data", "digits", "--limit", "0", "-o", "new.wsm"],
    "fit levels 0": ["fit", "--data", "digits", "--levels", "0", "-o", "new.wsm"],
    "fit levels too many": ["fit", "--data", "digits", "--levels", "9", "-o", "new.wsm"],
    "fit radius -1": ["fit", "--data", "digits", "--radius", "-1", "-o", "new.wsm"],
    "fit degree 4": ["fit", "--data", "digits", "--degree", "4", "-o", "new.wsm"],
    "fit holdout 0.7": ["fit", "--data", "digits", "--select", "--holdout", "0.7", "-o", "new.wsm"],
    "fit holdout nan": ["fit", "--data", "digits", "--select", "--holdout", "nan", "-o", "new.wsm"],
    "fit wavelet empty": ["fit", "--data", "digits", "--wavelet", "", "-o", "new.wsm"],
    "fit wavelet biorthogonal": ["fit", "--data", "digits", "--wavelet", "bior2.2", "-o", "new.wsm"],
    "fit gate scales nan": ["fit", "--data", "digits", "--family", "gaussian+gates", "--gate-scales", "nan",
                            "-o", "new.wsm"],
    "fit gate scales 0": ["fit", "--data", "digits", "--family", "gaussian+gates", "--gate-scales", "0,1",
                          "-o", "new.wsm"],
    "evaluate sigma 0": ["evaluate", "--model", "m.wsm", "--data", "digits", "--sigmas", "0,1", "-o", "e.json"],
    "evaluate sigma nan": ["evaluate", "--model", "m.wsm", "--data", "digits", "--sigmas", "nan", "-o", "e.json"],
    "evaluate seed -1": ["evaluate", "--model", "m.wsm", "--data", "digits", "--seed", "-1", "-o", "e.json"],
    "evaluate limit 0": ["evaluate", "--model", "m.wsm", "--data", "digits", "--limit", "0", "-o", "e.json"],
    "sample n 0": ["sample", "--model", "m.wsm", "-n", "0", "-o", "s.png"],
    "sample n -3": ["sample", "--model", "m.wsm", "-n", "-3", "-o", "s.png"],
    "sample steps 0": ["sample", "--model", "m.wsm", "--steps", "0", "-o", "s.png"],
    "sample n text": ["sample", "--model", "m.wsm", "-n", "many", "-o", "s.png"],
    "compare samples -2": ["compare", "--models", "m.wsm", "empirical", "--data", "digits", "--samples", "-2",
                           "-o", "cmp"],
    "compare n 0": ["compare", "--models", "m.wsm", "empirical", "--data", "digits", "-n", "0", "-o", "cmp"],
    "compare train-limit 0": ["compare", "--models", "m.wsm", "empirical", "--data", "digits", "--train-limit", "0",
                              "-o", "cmp"],
    "train batch-size 0": ["train", "--arch", "cnn", "--data", "digits", "--batch-size", "0", "-o", "n2.pt"],
    "train batch-size -4": ["train", "--arch", "cnn", "--data", "digits", "--batch-size", "-4", "-o", "n2.pt"],
    "train lr -1": ["train", "--arch", "cnn", "--data", "digits", "--lr", "-1", "-o", "n2.pt"],
    "train lr nan": ["train", "--arch", "cnn", "--data", "digits", "--lr", "nan", "-o", "n2.pt"],
    "train lr 0": ["train", "--arch", "cnn", "--data", "digits", "--lr", "0", "-o", "n2.pt"],
    "train width -3": ["train", "--arch", "cnn", "--data", "digits", "--width", "-3", "-o", "n2.pt"],
    "train width 0": ["train", "--arch", "unet", "--data", "digits", "--width", "0", "-o", "n2.pt"],
    "train depth 0": ["train", "--arch", "cnn", "--data", "digits", "--depth", "0", "-o", "n2.pt"],
    "train epochs 0": ["train", "--arch", "cnn", "--data", "digits", "--epochs", "0", "-o", "n2.pt"],
    "train max-minutes 0": ["train", "--arch", "cnn", "--data", "digits", "--max-minutes", "0", "-o", "n2.pt"],
    "report n-test 0": ["report", "--data", "digits", "--n-test", "0", "-o", "rep"],
    "run n-train -1": ["run", "--data", "digits", "--n-train", "-1", "-o", "rep"],
    "data show n 0": ["data", "show", "digits", "-n", "0", "-o", "g.png"],
    "export missing": ["export", "--model", "none.pt", "-o", "n.safetensors"],
    "export junk": ["export", "--model", "junk.pt", "-o", "n.safetensors"],
    "export wrong suffix": ["export", "--model", "net.pt", "-o", "n.pt"],
    "export over its checkpoint": ["export", "--model", "net.pt", "-o", "net.pt"],
    "export under a file": ["export", "--model", "net.pt", "-o", "afile/n.safetensors"],
    # options the chosen configuration would ignore
    "fit gates with degree": ["fit", "--data", "digits", "--family", "gaussian+gates", "--degree", "2", "-o", "new.wsm"],
    "fit gates with shared": ["fit", "--data", "digits", "--family", "gaussian+gates", "--shared", "-o", "new.wsm"],
    "fit gate scales without gates": ["fit", "--data", "digits", "--gate-scales", "1,2", "-o", "new.wsm"],
    "fit mixture with degree": ["fit", "--data", "digits", "--family", "mixture", "--degree", "2", "-o", "new.wsm"],
    "fit mixture components 0": ["fit", "--data", "digits", "--family", "mixture", "--components", "0",
                                 "-o", "new.wsm"],
    "fit local-mixture with degree": ["fit", "--data", "digits", "--family", "local-mixture", "--degree", "2",
                                      "-o", "new.wsm"],
    "fit mixture with basis": ["fit", "--data", "digits", "--family", "mixture", "--basis", "pixel", "-o", "new.wsm"],
    "fit cascade with degree": ["fit", "--data", "digits", "--family", "cascade", "--degree", "2", "-o", "new.wsm"],
    "fit cascade too many levels": ["fit", "--data", "digits", "--family", "cascade", "--levels", "3", "-o", "new.wsm"],
    "fit joined with basis": ["fit", "--data", "digits", "--family", "mixture+local-mixture", "--basis", "pixel",
                              "-o", "new.wsm"],
    "fit local-mixture components auto": ["fit", "--data", "digits", "--family", "local-mixture", "--components",
                                          "auto", "-o", "new.wsm"],
    "fit basis without local-mixture": ["fit", "--data", "digits", "--basis", "pixel", "-o", "new.wsm"],
    "fit components without mixture": ["fit", "--data", "digits", "--components", "3", "-o", "new.wsm"],
    "fit strongest with shared": ["fit", "--data", "digits", "--family", "strongest", "--shared", "-o", "new.wsm"],
    "fit strongest with degree 1": ["fit", "--data", "digits", "--family", "strongest", "--degree", "1", "-o", "new.wsm"],
    "fit strongest gate scale 0": ["fit", "--data", "digits", "--family", "strongest", "--gate-scales", "0",
                                   "-o", "new.wsm"],
    "train unet depth": ["train", "--arch", "unet", "--data", "digits", "--depth", "3", "-o", "n2.pt"],
    "fit select on a cluster": ["fit", "--data", "digits", "--select", "--workers", "1", "-o", "new.wsm"],
    # missing inputs
    "evaluate missing model": ["evaluate", "--model", "none.wsm", "--data", "digits", "-o", "e.json"],
    "fit missing data": ["fit", "--data", "none.npy", "-o", "new.wsm"],
    "sample missing model": ["sample", "--model", "none.pt", "-o", "s.png"],
    "sample-quality missing": ["sample-quality", "--samples", "none.npz", "--data", "digits", "-o", "q.json"],
    "report missing network": ["report", "--data", "digits", "--network", "none.pt", "-o", "rep"],
    "compare unknown reference": ["compare", "--models", "m.wsm", "empirical", "--data", "digits", "--reference",
                                  "nosuch", "-n", "20", "-o", "cmp"],
    "data show unknown": ["data", "show", "no-such-set", "-o", "g.png"],
    "data fetch unknown": ["data", "fetch", "no-such-set"],
    # corrupt and foreign inputs
    "evaluate truncated machine": ["evaluate", "--model", "trunc.wsm", "--data", "digits", "-o", "e.json"],
    "evaluate junk machine": ["evaluate", "--model", "junk.wsm", "--data", "digits", "-o", "e.json"],
    "sample junk network": ["sample", "--model", "junk.pt", "-o", "s.png"],
    "sample-quality junk": ["sample-quality", "--samples", "junk.npz", "--data", "digits", "-o", "q.json"],
    "sample-quality junk array": ["sample-quality", "--samples", "junk.npy", "--data", "digits", "-o", "q.json"],
    "sample-quality not images": ["sample-quality", "--samples", "m.wsm", "--data", "digits", "-o", "q.json"],
    "fit junk data": ["fit", "--data", "junk.npy", "-o", "new.wsm"],
    "report junk network": ["report", "--data", "digits", "--network", "junk.pt", "-o", "rep"],
    "report machine as network": ["report", "--data", "digits", "--network", "m.wsm", "-o", "rep"],
    "evaluate the same model twice": ["evaluate", "--model", "m.wsm", "./m.wsm", "--data", "digits", "-o", "e.json"],
    # unwritable outputs
    "fit empty output": ["fit", "--data", "digits", "-o", ""],
    "fit output under a file": ["fit", "--data", "digits", "-o", "afile/new.wsm"],
    "fit output in /proc": ["fit", "--data", "digits", "-o", "/proc/new.wsm"],
    "evaluate output is a folder": ["evaluate", "--model", "m.wsm", "--data", "digits", "-o", "."],
    "train output under a file": ["train", "--arch", "cnn", "--data", "digits", "-o", "afile/n2.pt"],
    "report output is a file": ["report", "--data", "digits", "-o", "afile"],
    "compare output under a file": ["compare", "--models", "m.wsm", "empirical", "--data", "digits", "-o", "afile/c"],
    "sample output under a file": ["sample", "--model", "m.wsm", "-o", "afile/s.png"],
    "sample wrong image suffix": ["sample", "--model", "m.wsm", "-o", "s.gif"],
    "data show output under a file": ["data", "show", "digits", "-o", "afile/g.png"],
    # an output that is an input, or a file of another kind
    "evaluate over its model": ["evaluate", "--model", "m.wsm", "--data", "digits", "-o", "m.wsm"],
    "evaluate over its data": ["evaluate", "--model", "m.wsm", "--data", "evaluation.json", "-o", "evaluation.json"],
    "sample over its network": ["sample", "--model", "net.pt", "-o", "net.pt"],
    "fit over a network": ["fit", "--data", "digits", "-o", "net.pt"],
    "fit over its data": ["fit", "--data", "data.npy", "-o", "data.npy"],
    "fit over a foreign .wsm": ["fit", "--data", "digits", "-o", "notes.wsm"],
    "sample-quality over its samples": ["sample-quality", "--samples", "s.npz", "--data", "digits", "-o", "s.npz"],
    "train over its data": ["train", "--arch", "cnn", "--data", "data.npy", "-o", "data.npy"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument(name, work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    before = _snapshot(work)
    try:
        rc = main(CASES[name])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, f"{name}: exit {rc}, stderr {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err!r}"
    assert _snapshot(work) == before, f"{name} changed or left files"


def test_good_fit_passes_the_same_checks(work, monkeypatch, capsys):
    """The checks refuse only what is wrong: the same folder takes a good fit."""
    monkeypatch.chdir(work)
    assert main(GOOD_FIT) == 0
    assert (work / "new.wsm").exists() and (work / "new.wsm.json").exists()
    for p in ("new.wsm", "new.wsm.json"):
        (work / p).unlink()


def test_export_round_trip(work, monkeypatch, capsys, tmp_path):
    import torch

    from wavescore.networks import load_network

    monkeypatch.chdir(work)
    out = tmp_path / "net.safetensors"
    assert main(["export", "--model", "net.pt", "-o", str(out)]) == 0
    x = load_dataset("digits", limit=4)
    assert torch.equal(load_network(out).denoise(x, 0.5), load_network(work / "net.pt").denoise(x, 0.5))


def test_one_line_in_a_real_process_and_debug(tmp_path):
    """The installed command: one line and status 2 without --debug, the traceback with it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "wavescore.cli", "sample", "--model", str(tmp_path / "none.wsm"), "-o",
           str(tmp_path / "s.png")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    run = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "Traceback" in run.stderr
    assert list(tmp_path.iterdir()) == []
