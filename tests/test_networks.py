"""Trained denoisers: shapes, EDM preconditioning (Karras et al. 2022, Table 1), training and resume."""
import json
import math

import pytest
import torch
from torch import nn

from wavescore import WavescoreError, load_dataset
from wavescore.cli import main
from wavescore.networks import EDMDenoiser, SmallCNN, SmallTransformer, SmallUNet, load_network, train

TINY_CNN = {"width": 8, "depth": 3}
TINY_UNET = {"base": 8, "mults": (1, 2)}
TINY_TF = {"dim": 16, "depth": 2, "heads": 2, "patch": 2}  # 8x8 digits: 16 tokens


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=96)


def test_shapes_and_receptive_field():
    x = torch.randn(3, 2, 8, 8)
    c = torch.zeros(3)
    cnn = SmallCNN(channels=2, width=8, depth=4, kernel=5)
    assert cnn(x, c).shape == x.shape and cnn.receptive_field == 17
    assert SmallUNet(channels=2, base=8)(x, c).shape == x.shape
    n_default = sum(p.numel() for p in SmallUNet().parameters())
    assert 0.3e6 < n_default < 0.8e6
    with pytest.raises(WavescoreError, match="divisible"):
        SmallUNet(base=8)(torch.randn(1, 1, 6, 6), torch.zeros(1))


def test_cnn_is_local():
    """A pixel's output depends only on inputs within receptive_field // 2 of it."""
    torch.manual_seed(0)
    cnn = SmallCNN(width=4, depth=3, kernel=3)  # receptive field 7: radius 3
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    cnn(x, torch.zeros(1))[0, 0, 8, 8].backward()
    nz = torch.nonzero(x.grad[0, 0])
    assert nz[:, 0].min() >= 5 and nz[:, 0].max() <= 11 and nz[:, 1].min() >= 5 and nz[:, 1].max() <= 11


# ------------------------------------------------------------------ transformer
def _randomise(module, names, seed=0):
    """Give the zero-initialised (adaLN-Zero) layers named ``names`` random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(name.startswith(n) for n in names):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def test_transformer_shapes_and_preconditioning():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 8, 12, dtype=torch.float64)
    sigma = torch.tensor([0.02, 0.7, 30.0], dtype=torch.float64)
    net = SmallTransformer(channels=2, dim=16, depth=2, heads=2, patch=4)
    model = EDMDenoiser(net)
    sd = 0.5
    c_skip = (sd**2 / (sigma**2 + sd**2)).reshape(-1, 1, 1, 1)
    # adaLN-Zero: a fresh network outputs zero, so the denoiser starts as c_skip x.
    assert torch.allclose(model(x, sigma), c_skip * x, rtol=1e-6, atol=1e-6)
    _randomise(net, ["blocks", "ada_out", "out"])
    out = net(x.float(), torch.log(sigma.float()) / 4)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x.float(), torch.zeros(3)))  # sigma reaches the output
    c_out = (sigma * sd / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    c_in = (1 / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    expected = c_skip * x + c_out * net((c_in * x).float(), (sigma.log() / 4).float()).double()
    assert torch.allclose(model(x, sigma), expected, rtol=1e-5, atol=1e-5)
    assert 1.0e6 < sum(p.numel() for p in SmallTransformer().parameters()) < 1.5e6


def test_transformer_unpatchify_inverts_patchify():
    """With the attention and MLP branches shut (zero gates, as initialised) every token is
    mapped on its own: an output pixel must depend exactly on the inputs of its own patch, which
    holds only if unpatchify puts each token back where patchify took it from."""
    net = SmallTransformer(channels=2, dim=8, depth=1, heads=2, patch=2)
    _randomise(net, ["out", "ada_out"])
    x = torch.randn(1, 2, 6, 4, requires_grad=True)
    for c, i, j in [(0, 0, 0), (1, 3, 2), (0, 5, 3), (1, 2, 1)]:
        x.grad = None
        net(x, torch.zeros(1))[0, c, i, j].backward()
        nz = {tuple(v) for v in torch.nonzero(x.grad[0].abs().sum(0)).tolist()}
        pi, pj = i // 2 * 2, j // 2 * 2
        assert nz == {(pi, pj), (pi, pj + 1), (pi + 1, pj), (pi + 1, pj + 1)}, (c, i, j)


def test_transformer_refuses_indivisible_size():
    net = SmallTransformer(dim=8, depth=1, heads=2, patch=4)
    with pytest.raises(WavescoreError, match=r"patch 4 needs H and W divisible by 4, got \(8, 6\).*pad the images"):
        net(torch.randn(1, 1, 8, 6), torch.zeros(1))
    with pytest.raises(WavescoreError, match="divisible by heads"):
        SmallTransformer(dim=12, heads=8)


# ------------------------------------------------------------------ CLI train
def _cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip() and "it/s" not in line and "s/it" not in line]


def test_cli_trains_a_transformer(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from wavescore.networks import save_safetensors

    out = tmp_path / "tf.pt"
    rc, _ = _cli(["train", "--arch", "transformer", "--data", "digits", "--limit", "32", "--epochs", "1",
                  "--batch-size", "16", "--width", "16", "--depth", "1", "--heads", "2", "--patch", "2",
                  "-o", str(out)], capsys)
    assert rc == 0
    model = load_network(out)
    assert model.config_["arch"] == "transformer" and isinstance(model.net, SmallTransformer)
    assert model.config_["arch_kwargs"] == {"dim": 16, "depth": 1, "heads": 2, "patch": 2}
    # weights only: the safetensors export reads back bit for bit
    x = load_dataset("digits", limit=4)
    back = load_network(save_safetensors(model, tmp_path / "tf.safetensors"))
    assert torch.equal(back.denoise(x, 0.5), model.denoise(x, 0.5))


@pytest.mark.parametrize("args,match", [
    (["--arch", "transformer", "--padding", "circular"], "--padding applies only to --arch cnn, not transformer"),
    (["--arch", "cnn", "--patch", "2"], "--patch applies only to --arch transformer, not cnn"),
    (["--arch", "unet", "--heads", "2"], "--heads applies only to --arch transformer, not unet"),
    (["--arch", "unet", "--depth", "2"], "--depth applies only to --arch cnn or transformer, not unet"),
    (["--arch", "transformer", "--patch", "3"], "divisible by 3"),
])
def test_cli_refuses_options_of_other_architectures(tmp_path, capsys, args, match):
    out = tmp_path / "n.pt"
    rc, lines = _cli(["train", "--data", "digits", "--limit", "16", "--epochs", "1", *args, "-o", str(out)], capsys)
    assert rc == 2 and len(lines) == 1 and match in lines[0], lines
    assert not out.exists()


def test_cli_circular_cnn_is_translation_equivariant(tmp_path, capsys):
    """--padding circular: D(roll(x)) == roll(D(x)) exactly (a torus has no border); the default
    zero padding sees the border, so a roll changes more than the position of the output."""
    common = ["train", "--arch", "cnn", "--data", "digits", "--limit", "32", "--epochs", "1", "--batch-size", "16",
              "--width", "8", "--depth", "3"]
    x = torch.randn(4, 1, 8, 8)
    roll = lambda t: torch.roll(t, shifts=(3, 5), dims=(-2, -1))  # noqa: E731
    for padding, equivariant in (("circular", True), ("zeros", False)):
        out = tmp_path / f"{padding}.pt"
        rc, _ = _cli([*common, "--padding", padding, "-o", str(out)], capsys)
        assert rc == 0
        model = load_network(out)
        assert model.config_["arch_kwargs"] == ({"width": 8, "depth": 3, "padding": "circular"} if equivariant
                                                else {"width": 8, "depth": 3})  # zeros is the default: left out
        for sigma in (0.1, 1.0):
            gap = (model.denoise(roll(x), sigma) - roll(model.denoise(x, sigma))).abs().max().item()
            assert (gap < 1e-5) if equivariant else (gap > 1e-3), (padding, sigma, gap)


class _Zero(nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


class _Echo(nn.Module):
    """Returns its input scaled by c_noise, to check c_in and c_noise."""
    def forward(self, x, c_noise):
        return x * c_noise.reshape(-1, 1, 1, 1)


def test_preconditioning_formulas():
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    sd = 0.5
    c_skip = (sd**2 / (sigma**2 + sd**2)).reshape(-1, 1, 1, 1)
    c_out = (sigma * sd / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    c_in = (1 / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    c_noise = (sigma.log() / 4).reshape(-1, 1, 1, 1)
    zero = EDMDenoiser(_Zero(), sigma_data=sd)
    out = zero.denoise(x, sigma)
    assert out.dtype == torch.float64  # float32 inside, caller's dtype outside
    assert torch.allclose(out, c_skip * x, rtol=1e-6, atol=1e-6)
    echo = EDMDenoiser(_Echo(), sigma_data=sd)
    assert torch.allclose(echo(x, sigma), c_skip * x + c_out * c_in * x * c_noise, rtol=1e-12)


def test_denoise_restores_training_mode_and_checks_input():
    model = EDMDenoiser(SmallCNN(width=4, depth=2), shape=(1, 8, 8))
    model.train()
    model.denoise(torch.randn(2, 1, 8, 8), 0.3, batch_size=1)
    assert model.training
    with pytest.raises(WavescoreError, match="shape"):
        model.denoise(torch.randn(2, 1, 6, 6), 0.3)
    with pytest.raises(WavescoreError, match="sigma"):
        model.denoise(torch.randn(2, 1, 8, 8), 0.0)


def test_loss_falls(digits, tmp_path):
    model = train("cnn", digits, epochs=8, batch_size=16, lr=3e-3, out=tmp_path / "cnn.pt", progress=False,
                  arch_kwargs={"width": 16, "depth": 3})
    losses = [h["loss"] for h in model.history_]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    log = json.loads((tmp_path / "cnn.log.json").read_text())
    assert [e["loss"] for e in log["epochs"]] == losses
    assert model.shape_ == (1, 8, 8)


@pytest.mark.parametrize("arch,kw", [("cnn", TINY_CNN), ("unet", TINY_UNET), ("transformer", TINY_TF)])
def test_resume_equals_uninterrupted(digits, tmp_path, arch, kw):
    """Train 1 epoch, then ask for 2 on the same path: it continues at epoch 2 and ends bitwise
    equal to an uninterrupted 2-epoch run (model, optimizer and the training RNG are restored)."""
    common = dict(batch_size=32, lr=1e-3, seed=3, progress=False, arch_kwargs=kw)
    first = train(arch, digits, epochs=1, out=tmp_path / "a.pt", **common)
    assert first.epoch_ == 1
    resumed = train(arch, digits, epochs=2, out=tmp_path / "a.pt", **common)
    straight = train(arch, digits, epochs=2, out=tmp_path / "b.pt", **common)
    assert resumed.epoch_ == 2 and [h["epoch"] for h in resumed.history_] == [1, 2]
    assert resumed.history_[0]["loss"] == first.history_[0]["loss"]
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in straight.history_]
    for (k, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), k
    loaded = load_network(tmp_path / "a.pt")
    x = digits[:4]
    assert torch.equal(loaded.denoise(x, 0.5), straight.denoise(x, 0.5))
    # Already complete: nothing to do, the stored model comes back.
    again = train(arch, digits, epochs=2, out=tmp_path / "a.pt", **common)
    assert again.epoch_ == 2 and torch.equal(again.denoise(x, 0.5), straight.denoise(x, 0.5))


def test_validation_loss_and_plateau(digits, tmp_path):
    """val_loss is the EDM loss on fixed draws (recomputed here by hand from the saved weights);
    logging it changes nothing in the training; plateau= stops at the first epoch that improves
    val_loss by less than the fraction, and a resumed plateaued run trains no further."""
    common = dict(batch_size=32, lr=1e-3, seed=3, progress=False, arch_kwargs=TINY_CNN)
    val = load_dataset("digits", "test", limit=40)
    with_val = train("cnn", digits, epochs=2, out=tmp_path / "v.pt", validation=val, **common)
    plain = train("cnn", digits, epochs=2, out=tmp_path / "p.pt", **common)
    assert [h["loss"] for h in with_val.history_] == [h["loss"] for h in plain.history_]
    gen = torch.Generator().manual_seed(3 + 1)
    sg = torch.exp(-1.2 + 1.2 * torch.randn(len(val), generator=gen))
    noise = torch.randn(val.shape, generator=gen)
    w = (sg**2 + 0.25) / (sg * 0.5) ** 2
    net = load_network(tmp_path / "v.pt")
    with torch.no_grad():
        den = net(val + sg.reshape(-1, 1, 1, 1) * noise, sg)
    by_hand = float((w.reshape(-1, 1, 1, 1) * (den - val) ** 2).mean())
    assert with_val.history_[-1]["val_loss"] == pytest.approx(by_hand, rel=1e-5)
    # A threshold no epoch can meet stops after the second epoch of a 6-epoch budget ...
    stopped = train("cnn", digits, epochs=6, out=tmp_path / "s.pt", validation=val, plateau=0.999, **common)
    assert stopped.epoch_ == 2
    again = train("cnn", digits, epochs=6, out=tmp_path / "s.pt", validation=val, plateau=0.999, **common)
    assert again.epoch_ == 2
    # ... and resuming a run logged without validation measures its last epoch first.
    resumed = train("cnn", digits, epochs=3, out=tmp_path / "p.pt", validation=val, **common)
    assert resumed.history_[1]["val_measured"] == "on resume" and "val_loss" in resumed.history_[2]
    with pytest.raises(WavescoreError, match="pass validation="):
        train("cnn", digits, epochs=1, out=tmp_path / "x.pt", plateau=0.01, **common)
    with pytest.raises(WavescoreError, match="validation must be"):
        train("cnn", digits, epochs=1, out=tmp_path / "x.pt", validation=val[:, :, :4], **common)
    assert not (tmp_path / "x.pt").exists()


def test_resume_refuses_other_config(digits, tmp_path):
    train("cnn", digits, epochs=1, out=tmp_path / "c.pt", progress=False, arch_kwargs=TINY_CNN)
    with pytest.raises(WavescoreError, match="different configuration"):
        train("cnn", digits, epochs=2, out=tmp_path / "c.pt", progress=False, arch_kwargs=TINY_CNN, lr=1e-3)


def test_load_errors(tmp_path):
    with pytest.raises(WavescoreError, match="no such"):
        load_network(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WavescoreError, match="corrupt"):
        load_network(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(WavescoreError, match="not a wavescore network"):
        load_network(foreign)


def test_truncated_checkpoint(digits, tmp_path):
    path = tmp_path / "t.pt"
    train("cnn", digits, epochs=1, out=path, progress=False, arch_kwargs=TINY_CNN)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WavescoreError, match="corrupt"):
        load_network(path)
    with pytest.raises(WavescoreError, match="corrupt"):
        train("cnn", digits, epochs=2, out=path, progress=False, arch_kwargs=TINY_CNN)


# ------------------------------------------------------------------ hardening: checkpoints
@pytest.fixture(scope="module")
def tiny_ckpt(digits, tmp_path_factory):
    """A 1-epoch tiny CNN checkpoint (path) and the loaded checkpoint dict."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    train("cnn", digits[:32], epochs=1, batch_size=32, out=path, progress=False, arch_kwargs=TINY_CNN)
    return path, torch.load(path, weights_only=True)


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("damage,match", [
    (lambda c: _without(c, "epoch"), "'epoch' is None"),
    (lambda c: {**c, "epoch": "3"}, "'epoch' is '3'"),
    (lambda c: {**c, "epoch": -1}, "'epoch' is -1"),
    (lambda c: _without(c, "config"), "'config' is NoneType"),
    (lambda c: {**c, "config": [1, 2]}, "'config' is list"),
    (lambda c: {**c, "config": _without(c["config"], "arch")}, "unknown architecture None"),
    (lambda c: {**c, "config": {**c["config"], "shape": [1, 8]}}, "'shape'"),
    (lambda c: {**c, "config": {**c["config"], "sigma_data": "0.5"}}, "'sigma_data'"),
    (lambda c: {**c, "config": {**c["config"], "arch_kwargs": {"width": -3}}}, "cannot build a network"),
    (lambda c: _without(c, "model"), "no weights"),
    (lambda c: {**c, "model": [1, 2]}, "no weights"),
    (lambda c: {**c, "model": _without(c["model"], "net.convs.0.weight")}, "do not match"),
    (lambda c: {**c, "history": "lots"}, "'history'"),
])
def test_damaged_checkpoint_is_one_line_error(tiny_ckpt, tmp_path, damage, match):
    """Missing or mistyped keys: a one-line WavescoreError, never a KeyError/TypeError traceback."""
    _, ckpt = tiny_ckpt
    path = tmp_path / "damaged.pt"
    torch.save(damage(dict(ckpt)), path)
    with pytest.raises(WavescoreError, match=match) as info:
        load_network(path)
    assert "\n" not in str(info.value)


def test_resume_from_damaged_state_is_one_line_error(digits, tiny_ckpt, tmp_path):
    _, ckpt = tiny_ckpt
    path = tmp_path / "tiny.pt"
    for damaged in (_without(ckpt, "optimizer"), {**ckpt, "rng": torch.zeros(3)}):
        torch.save(damaged, path)
        with pytest.raises(WavescoreError, match="cannot resume") as info:
            train("cnn", digits[:32], epochs=2, batch_size=32, out=path, progress=False, arch_kwargs=TINY_CNN)
        assert "\n" not in str(info.value)


def test_gpu_checkpoint_loads_on_cpu(tiny_ckpt, tmp_path, monkeypatch):
    """A checkpoint whose tensors were saved on cuda:0 loads (onto the CPU) on a CPU-only machine,
    and load_network builds a CPU model even under another default device."""
    path, ckpt = tiny_ckpt
    gpu = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, gpu)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu, weights_only=True)  # the file really claims the GPU
    x = torch.randn(2, 1, 8, 8)
    model = load_network(gpu)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.equal(model.denoise(x, 0.5), load_network(path).denoise(x, 0.5))
    with torch.device("meta"):
        model = load_network(path)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.equal(model.denoise(x, 0.5), load_network(path).denoise(x, 0.5))


# ------------------------------------------------------------------ hardening: train() arguments
@pytest.mark.parametrize("arch,kwargs,match", [
    ("cnn", {"batch_size": -4}, "batch_size"), ("cnn", {"batch_size": 0}, "batch_size"),
    ("cnn", {"batch_size": 2.5}, "batch_size"), ("cnn", {"batch_size": True}, "batch_size"),
    ("cnn", {"lr": 0}, "lr"), ("cnn", {"lr": -1e-3}, "lr"), ("cnn", {"lr": math.nan}, "lr"),
    ("cnn", {"lr": math.inf}, "lr"), ("cnn", {"epochs": 0}, "epochs"), ("cnn", {"epochs": 1.5}, "epochs"),
    ("cnn", {"max_minutes": 0}, "max_minutes"), ("cnn", {"max_minutes": math.nan}, "max_minutes"),
    ("cnn", {"seed": 1.5}, "seed"), ("cnn", {"seed": "0"}, "seed"), ("cnn", {"sigma_data": 0}, "sigma_data"),
    ("cnn", {"p_std": -1}, "p_std"),
    ("cnn", {"arch_kwargs": {"width": -3}}, "width"), ("cnn", {"arch_kwargs": {"width": 0}}, "width"),
    ("cnn", {"arch_kwargs": {"depth": 0}}, "depth"), ("cnn", {"arch_kwargs": {"widht": 8}}, "unknown cnn option"),
    ("cnn", {"arch_kwargs": {"channels": 3}}, "unknown cnn option"),
    ("unet", {"arch_kwargs": {"base": 0}}, "base"), ("unet", {"arch_kwargs": {"base": -8}}, "base"),
    ("unet", {"arch_kwargs": {"mults": (1, -2)}}, "mults"), ("unet", {"arch_kwargs": {"mults": ()}}, "mults"),
    ("unet", {"arch_kwargs": {"base": 8, "mults": (1, 2, 2, 2, 2)}}, "divisible"),
    ("transformer", {"arch_kwargs": {**TINY_TF, "patch": 3}}, "needs H and W divisible by 3"),
    ("transformer", {"arch_kwargs": {"dim": 10, "heads": 4}}, "divisible by heads"),
    ("transformer", {"arch_kwargs": {"patch": 0}}, "patch"),
    ("transformer", {"arch_kwargs": {"width": 16}}, "unknown transformer option"),
])
def test_train_refuses_bad_arguments_before_touching_out(digits, tmp_path, arch, kwargs, match):
    out = tmp_path / "sub" / "net.pt"
    args = {"epochs": 1, "batch_size": 32, "progress": False, **kwargs}
    with pytest.raises(WavescoreError, match=match) as info:
        train(arch, digits[:32], out=out, **args)
    assert "\n" not in str(info.value)
    assert not out.parent.exists()


def test_train_refuses_non_finite_data(digits, tmp_path):
    data = digits[:32].clone()
    data[3, 0, 2, 2] = math.nan
    with pytest.raises(WavescoreError, match="NaN"):
        train("cnn", data, epochs=1, out=tmp_path / "x.pt", progress=False, arch_kwargs=TINY_CNN)
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------ hardening: divergence
def test_divergence_stops_without_saving(digits, tmp_path):
    out = tmp_path / "blowup.pt"
    with pytest.raises(WavescoreError, match=r"training diverged at epoch 1 step \d+ \(loss (nan|inf)\): lower --lr"):
        train("cnn", digits[:64], epochs=3, batch_size=8, lr=1e10, out=out, progress=False, arch_kwargs=TINY_CNN)
    assert not out.exists()


@pytest.mark.parametrize("poison_at,match", [(2, r"epoch 2 step 3 \(loss nan\)"),
                                             (3, r"epoch 2 step 3 \(the weights became non-finite\)")])
def test_divergence_keeps_last_good_checkpoint(digits, tmp_path, monkeypatch, poison_at, match):
    """Epoch 1 is fine; in epoch 2 an optimizer step turns the weights NaN: mid-epoch (the next
    loss is NaN) or at the epoch's last step (the loss never is). Either way training stops and
    the epoch-1 checkpoint stays as it was."""
    common = dict(batch_size=32, progress=False, arch_kwargs=TINY_CNN)  # 96 images: 3 steps per epoch
    out = tmp_path / "net.pt"
    train("cnn", digits, epochs=1, out=out, **common)
    before, log_before = out.read_bytes(), (tmp_path / "net.log.json").read_text()
    calls = []

    class PoisonAdam(torch.optim.Adam):
        def step(self, closure=None):
            result = super().step(closure)
            calls.append(1)
            if len(calls) == poison_at:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(math.nan)
            return result

    monkeypatch.setattr(torch.optim, "Adam", PoisonAdam)
    with pytest.raises(WavescoreError, match=match) as info:
        train("cnn", digits, epochs=3, out=out, **common)
    assert f"{out} keeps the last good epoch (1)" in str(info.value)
    assert out.read_bytes() == before and (tmp_path / "net.log.json").read_text() == log_before
    kept = load_network(out)
    assert kept.epoch_ == 1 and all(torch.isfinite(p).all() for p in kept.parameters())


# ------------------------------------------------------------------ safetensors export
def test_safetensors_round_trip(digits, tiny_ckpt, tmp_path):
    pytest.importorskip("safetensors")
    from wavescore.models import load_model
    from wavescore.networks import save_safetensors

    path, _ = tiny_ckpt
    model = load_network(path)
    st = save_safetensors(model, tmp_path / "net.safetensors")
    meta = json.loads((tmp_path / "net.json").read_text())
    assert meta["format"] == "wavescore-network" and meta["epoch"] == 1 and meta["config"] == model.config_
    assert meta["history"] == model.history_ and meta["weights"] == "net.safetensors"
    back = load_network(st)
    x = digits[:8]
    for s in (0.05, 0.5, 5.0):
        assert torch.equal(back.denoise(x, s), model.denoise(x, s))  # bit for bit
    assert back.epoch_ == 1 and back.history_ == model.history_ and back.shape_ == model.shape_ and not back.training
    name, via_spec = load_model(str(st))
    assert name == "net" and via_spec.kind_ == "network"
    assert torch.equal(via_spec.denoise(x, 0.5), model.denoise(x, 0.5))
    # straight from a .pt checkpoint, and from a freshly trained model
    save_safetensors(path, tmp_path / "conv.safetensors")
    assert torch.equal(load_network(tmp_path / "conv.safetensors").denoise(x, 0.5), model.denoise(x, 0.5))
    fresh = train("unet", digits[:32], epochs=1, batch_size=32, out=tmp_path / "u.pt", progress=False,
                  arch_kwargs=TINY_UNET)
    save_safetensors(fresh, tmp_path / "u.safetensors")
    assert torch.equal(load_network(tmp_path / "u.safetensors").denoise(x, 0.5), fresh.denoise(x, 0.5))


def test_safetensors_errors(tiny_ckpt, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import sys

    from wavescore.networks import save_safetensors

    path, _ = tiny_ckpt
    model = load_network(path)
    with pytest.raises(WavescoreError, match=r"\.safetensors"):
        save_safetensors(model, tmp_path / "net.pt")
    with pytest.raises(WavescoreError, match="configuration"):
        save_safetensors(EDMDenoiser(SmallCNN(width=4, depth=2)), tmp_path / "bare.safetensors")
    with pytest.raises(WavescoreError, match="no such network file"):
        load_network(tmp_path / "missing.safetensors")

    st = save_safetensors(model, tmp_path / "net.safetensors")
    side = tmp_path / "net.json"
    good = side.read_text()
    side.unlink()
    with pytest.raises(WavescoreError, match="net.json is missing beside it"):
        load_network(st)
    side.write_text("{truncated")
    with pytest.raises(WavescoreError, match="unreadable network configuration"):
        load_network(st)
    side.write_text(json.dumps({**json.loads(good), "format": "other"}))
    with pytest.raises(WavescoreError, match="not a wavescore network configuration"):
        load_network(st)
    # weights of another network under this JSON: the checksum, and without it the shapes, refuse them
    other = train("cnn", torch.rand(8, 1, 8, 8), epochs=1, out=tmp_path / "o.pt", progress=False,
                  arch_kwargs={"width": 6, "depth": 3})
    save_safetensors(other, tmp_path / "o.safetensors")
    (tmp_path / "o.safetensors").replace(st)
    side.write_text(good)
    with pytest.raises(WavescoreError, match="not the ones"):
        load_network(st)
    side.write_text(json.dumps(_without(json.loads(good), "sha256")))
    with pytest.raises(WavescoreError, match="do not match") as info:
        load_network(st)
    assert "\n" not in str(info.value)
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(WavescoreError, match="not a readable .safetensors"):
        load_network(st)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(WavescoreError, match="pip install"):
        save_safetensors(model, tmp_path / "again.safetensors")
