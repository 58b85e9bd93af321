"""diffusers U-Nets as sigma-parameterised references (diffusers:DIR): the VE <-> VP conversion
against a hand-written one, the log-sigma timestep interpolation, folder layouts and errors."""
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from wavescore import WavescoreError  # noqa: E402
from wavescore.models import load_model  # noqa: E402

T = 50


def _unet(out_channels=1, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


def _save(folder, unet, **sched):
    unet.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=T, **sched).save_pretrained(folder)
    return folder


def _hand_abar(schedule, b0=1e-4, b1=0.02):
    """abar_t by hand, float64 (DDPM linear; LDM scaled_linear; Nichol-Dhariwal cosine capped at 0.999)."""
    if schedule == "linear":
        betas = np.linspace(b0, b1, T)
    elif schedule == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, T) ** 2
    else:
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("schedule,prediction", [("linear", "epsilon"), ("scaled_linear", "epsilon"),
                                                 ("squaredcos_cap_v2", "epsilon"), ("linear", "v_prediction"),
                                                 ("linear", "sample")])
def test_matches_hand_conversion(unet, tmp_path, schedule, prediction):
    folder = _save(tmp_path / "ddpm", unet, beta_schedule=schedule, prediction_type=prediction)
    abar = _hand_abar(schedule)
    ref = DDPMScheduler.from_pretrained(folder).alphas_cumprod.double().numpy()
    assert np.allclose(abar, ref, rtol=1e-4)  # the hand schedule is diffusers' schedule
    name, model = load_model(f"diffusers:{folder}")
    assert name == "ddpm" and model.kind_ == "network" and model.shape_ == (1, 8, 8)

    ks = [0, 17, 33]
    ab = torch.tensor(abar[ks]).reshape(-1, 1, 1, 1)
    sigma = ((1 - ab) / ab).sqrt()  # exactly the schedule's sigma at integer timesteps ks
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1) + sigma * torch.randn(
        3, 1, 8, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = unet((x * ab.sqrt()).float(), torch.tensor(ks)).sample.double()
    want = {"epsilon": x - sigma * out, "v_prediction": ab * x - (1 - ab).sqrt() * out, "sample": out}[prediction]
    got = model.denoise(x, sigma.flatten())
    assert got.dtype == torch.float64 and got.shape == x.shape and not got.requires_grad
    err = (got - want).abs().amax(dim=(1, 2, 3))
    assert torch.all(err <= 1e-5 * (1 + sigma.flatten())), err
    assert torch.equal(model(x, sigma.flatten()), got)  # __call__ is denoise


def _spy(model, monkeypatch):
    seen = []
    forward = model.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append(torch.as_tensor(timestep).detach().double().clone())
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", spy)
    return seen


def test_timestep_interpolates_in_log_sigma(unet, tmp_path, monkeypatch):
    folder = _save(tmp_path / "m", unet)
    _, model = load_model(f"diffusers:{folder}")
    abar = _hand_abar("linear")
    s = np.sqrt((1 - abar) / abar)
    k = 10
    sig = torch.tensor([math.sqrt(s[k] * s[k + 1]),                       # geometric midpoint: t = k + 1/2
                        math.exp(0.75 * math.log(s[k]) + 0.25 * math.log(s[k + 1])),  # t = k + 1/4
                        s[0] / 10, s[-1] * 10], dtype=torch.float64)         # clamped to 0 and T - 1
    seen = _spy(model, monkeypatch)
    x = torch.randn(4, 1, 8, 8)
    got = model.denoise(x, sig)
    t = torch.cat(seen)
    assert torch.allclose(t, torch.tensor([k + 0.5, k + 0.25, 0, T - 1], dtype=torch.float64), atol=1e-4)
    # and the output is the conversion around the U-Net at that continuous timestep
    monkeypatch.undo()
    ab = (1 / (1 + sig.double() ** 2)).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        eps = unet((x * ab.sqrt()).float(), t.float()).sample
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), x - sig.reshape(-1, 1, 1, 1) * eps, atol=1e-4)
    # one sigma for the whole batch, batched in pieces, same answer
    one = model.denoise(x, float(sig[0]), batch_size=3)
    assert torch.allclose(one[0], got[0], atol=1e-6)


def test_pipeline_folder_and_learned_variance(unet, tmp_path):
    flat = _save(tmp_path / "flat", unet)
    pipe = tmp_path / "pipe"
    unet.save_pretrained(pipe / "unet")
    DDPMScheduler(num_train_timesteps=T).save_pretrained(pipe / "scheduler")
    x = torch.randn(2, 1, 8, 8)
    (n1, a), (n2, b) = load_model(f"diffusers:{flat}"), load_model(f"diffusers:{pipe}/")
    assert (n1, n2) == ("flat", "pipe")
    b.unet.train()
    assert torch.equal(a.denoise(x, 0.7), b.denoise(x, 0.7)) and b.unet.training  # mode restored
    # a U-Net with a learned variance (2C outputs): the first C channels are epsilon
    two = _unet(out_channels=2)
    folder = _save(tmp_path / "learned", two, variance_type="learned_range")
    _, model = load_model(f"diffusers:{folder}")
    ab = 1 / (1 + 0.7**2)
    with torch.no_grad():
        eps = two(x * math.sqrt(ab), torch.full((2,), float(model.timestep(0.7)))).sample[:, :1]
    assert torch.allclose(model.denoise(x, 0.7), x - 0.7 * eps, atol=1e-5)


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_errors(unet, tmp_path, monkeypatch):
    with pytest.raises(WavescoreError, match="no such folder"):
        load_model(f"diffusers:{tmp_path / 'missing'}")
    with pytest.raises(WavescoreError, match="give the folder"):
        load_model("diffusers:")
    only_unet = tmp_path / "only_unet"
    unet.save_pretrained(only_unet)
    with pytest.raises(WavescoreError, match="no scheduler_config.json"):
        load_model(f"diffusers:{only_unet}")
    with pytest.raises(WavescoreError, match="no U-Net config.json"):
        load_model(f"diffusers:{tmp_path}")

    folder = _save(tmp_path / "ok", unet)
    _, model = load_model(f"diffusers:{folder}")
    for x, sigma, match in [(torch.randn(2, 1, 6, 6), 0.5, "shape"), (torch.randn(1, 8, 8), 0.5, r"\(N, C, H, W\)"),
                            (torch.randn(2, 1, 8, 8), 0.0, "sigma"), (torch.randn(2, 1, 8, 8), float("nan"), "sigma"),
                            (torch.randn(2, 1, 8, 8), [0.1, 0.2, 0.3], "one value per image")]:
        with pytest.raises(WavescoreError, match=match):
            model.denoise(x, sigma)

    sched = folder / "scheduler_config.json"
    for changes, match in [({"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
                           ({"beta_schedule": "bogus"}, "beta_schedule 'bogus' is not supported"),
                           ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr")]:
        bad = tmp_path / f"bad_{len(changes)}_{list(changes)[0]}"
        shutil.copytree(folder, bad)
        _edit(bad / "scheduler_config.json", **changes)
        with pytest.raises(WavescoreError, match=match):
            load_model(f"diffusers:{bad}")
    ve = tmp_path / "ve"
    shutil.copytree(folder, ve)
    (ve / "scheduler_config.json").write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 50}))
    with pytest.raises(WavescoreError, match="DDPM-style"):
        load_model(f"diffusers:{ve}")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(WavescoreError, match="unreadable U-Net config"):
        load_model(f"diffusers:{broken}")
    noweights = tmp_path / "noweights"
    shutil.copytree(folder, noweights)
    for f in noweights.glob("diffusion_pytorch_model*"):
        f.unlink()
    with pytest.raises(WavescoreError, match="could not load the U-Net"):
        load_model(f"diffusers:{noweights}")

    assert sched.exists()
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    with pytest.raises(WavescoreError, match=r"pip install 'wavescore\[diffusers\]'"):
        load_model(f"diffusers:{folder}")


def test_command_line_takes_diffusers_models(unet, tmp_path, capsys):
    """`compare`, `evaluate` and `sample` accept diffusers:DIR beside machines (8x8 digits)."""
    from wavescore.cli import main

    folder = _save(tmp_path / "ddpm", unet)
    wsm = tmp_path / "m.wsm"
    assert main(["fit", "--data", "digits", "-o", str(wsm)]) == 0
    spec = f"diffusers:{folder}"
    assert main(["compare", "--models", str(wsm), spec, "--data", "digits", "-n", "20", "--sigmas", "0.5",
                 "-o", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(res["r2"]) == ["ddpm"] and "local-r1-P1" in res["r2"]["ddpm"]
    assert main(["evaluate", "--model", spec, "--data", "digits", "--limit", "20", "--sigmas", "0.5,2",
                 "-o", str(tmp_path / "e.json")]) == 0
    mse = json.loads((tmp_path / "e.json").read_text())["models"]["ddpm"]["mse"]
    assert len(mse) == 2 and all(math.isfinite(v) for v in mse)
    assert main(["sample", "--model", spec, "-n", "2", "--steps", "2", "-o", str(tmp_path / "s.png")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 1, 8, 8)
