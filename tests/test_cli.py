"""The command line end to end on small data."""
import json

import pytest

from wavescore import ScoreMachine
from wavescore.cli import main


def test_fit_evaluate_roundtrip(tmp_path, capsys):
    wsm = tmp_path / "m.wsm"
    assert main(["fit", "--data", "digits", "--family", "local", "--degree", "2", "--shared", "-o", str(wsm)]) == 0
    assert "fitted local-r1-P2-shared" in capsys.readouterr().out
    meta = json.loads((tmp_path / "m.wsm.json").read_text())
    assert meta["params"]["shared"] is True and meta["n_images"] == 1437
    g = tmp_path / "g.wsm"
    assert main(["fit", "--data", "digits", "--family", "gaussian", "-o", str(g)]) == 0
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--model", str(wsm), str(g), "--data", "digits", "--sigmas", "0.1,1", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["sigmas"] == [0.1, 1.0] and set(res["models"]) == {"local-r1-P2-shared", "gaussian-P1"}
    for v in res["models"].values():
        # a denoiser must beat doing nothing (MSE sigma^2) and the noise-free mean at sigma 1
        assert v["mse"][0] < 0.1**2 and v["mse"][1] < 1.0
    # the same seeded noise: evaluating again gives identical numbers
    assert main(["evaluate", "--model", str(g), "--data", "digits", "--sigmas", "0.1,1", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["models"]["gaussian-P1"]["mse"] == res["models"]["gaussian-P1"]["mse"]


def test_cli_errors(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.wsm"), "--data", "digits"]) == 2
    assert "no machine file" in capsys.readouterr().err
    assert main(["evaluate", "--model", "x.wsm", "--data", "digits", "--sigmas", "a,b"]) == 2
    assert "--sigmas" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--help"])


def test_fit_mixed_with_select_and_terms(tmp_path, capsys):
    wsm = tmp_path / "mix.wsm"
    assert main(["fit", "--data", "digits", "--family", "gaussian+local", "--degree", "2", "--select", "-o", str(wsm)]) == 0
    assert "fitted gaussian+local-r1-P2" in capsys.readouterr().out
    m = ScoreMachine.load(wsm)
    assert m.select and len(m.choice_["best"]) == len(m.choice_["sigmas"]) and m.n_samples_ == 1437
    terms = '[{"family": "gaussian"}, {"family": "local", "radius": 1, "kind": "squares"}]'
    assert main(["fit", "--data", "digits", "--family", "mixed", "--terms", terms, "-o", str(tmp_path / "t.wsm")]) == 0
    assert "gaussian+local-r1-sq" in capsys.readouterr().out
    assert main(["fit", "--data", "digits", "--family", "mixed", "--terms", "[{", "-o", str(tmp_path / "u.wsm")]) == 2
    assert "--terms must be a JSON list" in capsys.readouterr().err
