"""The report: generated on small real data and opened in headless Chromium."""
import json
import shutil
import subprocess

import pytest

from wavescore.report import run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    from wavescore import ScoreMachine, load_dataset

    reference = ScoreMachine(family="local", degree=1, radius=0, shared=True).fit(load_dataset("digits"), progress=False)
    run_report("digits", out, n_test=100, n_samples=4, steps=4, sigmas=(0.1, 1.0),
               configs=[dict(family="gaussian"), dict(family="local", degree=2), dict(cls="gated", sigmas=(0.1, 1.0)),
                        dict(family="mixture+local-mixture", holdout=100, sigmas=(0.1, 1.0),
                             parts=[dict(family="gaussian"), dict(family="mixture", components=5)]),
                        dict(family="cascade", components=2, coarse=dict(family="gaussian"))],
               network=reference, progress=False)
    return out


def test_report_files_and_numbers(report_dir):
    rep = json.loads((report_dir / "report.json").read_text())
    from wavescore.gates import GatedMachine

    gated = GatedMachine(sigmas=(0.1, 1.0)).name
    joined, cascade = "joined(gaussian-P1+mixture-K5)", "cascade(gaussian-P1; K2-r1)"
    assert set(rep["evaluation"]["models"]) == {"gaussian-P1", "local-r1-P2", gated, joined, cascade}
    assert rep["samples"]["sampler"][cascade] == "cascade"
    (lev,) = rep["cascade_levels"][cascade]["levels"].values()  # digits: one level, 4x4
    assert all(0 < e < s * s for e, s in zip(lev, rep["sigmas"]))  # every conditional beats the noisy details
    w = rep["join_weights"]  # the joined machine's per-band weights, plotted
    assert w["parts"] == ["gaussian-P1", "mixture-K5"] and len(w["weights"]) == 2 and len(w["bands"]) == 10
    assert gated in rep["samples"]["rows"] + list(rep["samples"]["diverged"])
    for res in rep["shapley"].values():
        assert len(res["coalitions"]) == 2 ** len(res["groups"])
    html = (report_dir / "index.html").read_text()
    # mse, subbands, two Shapley, schedule, shrinkage, filters, samples, mimicry samples, join weights: all embedded
    assert html.count("data:image/png;base64,") == 10
    # mimicry against the network, through compare_models: every machine a row, the best match a machine
    mim = rep["mimicry"]
    net = "network:local-r0-P1-shared"
    assert mim["references"] == [net] and mim["kinds"][net] == "network"
    assert set(mim["r2"][net]) == set(rep["evaluation"]["models"])
    assert mim["best_match"][net]["by_denoiser_r2"]["model"] in rep["evaluation"]["models"]
    assert all(-1 <= c["q25"] <= c["median"] <= c["q75"] <= 1 for c in mim["samples"]["correlation"][net].values())
    assert "Mimicry" in html and f"best match for {net}" in html
    for name in ("mimicry_compare.json", "mimicry_matrix.md", "mimicry_matrix.png", "mimicry_samples.png"):
        assert (report_dir / name).exists()
    assert len(rep["schedule"]["choice"]) == len(rep["sigmas"])
    # agreement with a reference that is one of the candidates picks that candidate
    assert rep["schedule_network"]["choice"] == ["local-r0-P1-shared"] * 2


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/install.sh installs it)")
def test_report_renders_in_chromium(report_dir, tmp_path):
    page = (report_dir / "index.html").as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert 'data-images="ok"' in dom.stdout, "an image failed to load"
    console_errors = [l for l in dom.stderr.splitlines() if "CONSOLE" in l and ("Uncaught" in l or "Error" in l)]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2000",
                    f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
