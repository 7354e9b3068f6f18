"""The EMA generator: the average by hand, what uses it, checkpoints, export."""

import pytest
import torch
import torch.nn as nn

from pix2pix_lit import Pix2Pix, SyntheticPairedDataModule
from pix2pix_lit.ema import ema_decay_at, make_ema

from conftest import TINY_MODEL, quiet_trainer


def test_toy_average_equals_a_hand_computation():
    net = nn.Linear(3, 2)
    ema = make_ema(net, decay=0.9, warmup=False)
    weights = []
    for step in range(3):
        with torch.no_grad():
            net.weight.add_(torch.full_like(net.weight, step + 1.0))
        weights.append(net.weight.detach().clone())
        ema.update_parameters(net)
    # the first update takes the weights; then ema = 0.9 ema + 0.1 w
    hand = weights[0]
    for w in weights[1:]:
        hand = 0.9 * hand + 0.1 * w
    assert torch.allclose(ema.module.weight, hand, atol=1e-6)
    assert not torch.allclose(ema.module.weight, net.weight)


def test_the_host_counted_update_equals_torchs_and_skips_where_flagged():
    """``ema_update`` (no device reads) against torch's ``AveragedModel.update_parameters`` with the same warm-up,
    update by update, buffers included; a flagged update leaves the average, and a checkpoint's count is read."""
    from pix2pix_lit.ema import ema_update

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours, torchs = make_ema(net, decay=0.99), make_ema(net, decay=0.99)
    for step in range(12):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        ema_update(ours, net, torch.zeros(()) if step % 2 else None)
        torchs.update_parameters(net)
        for (k, a), (_, b) in zip(ours.state_dict().items(), torchs.state_dict().items()):
            assert torch.allclose(a.float(), b.float(), atol=1e-6), (step, k)
    before = [p.clone() for p in ours.parameters()]
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema_update(ours, net, torch.ones(()))  # G's update was skipped: the average stays
    assert all(torch.equal(a, b) for a, b in zip(before, ours.parameters())) and int(ours.n_averaged) == 13
    fresh = make_ema(net, decay=0.99)
    ema_update(fresh, net)  # count 0: a copy; then a state with another count is loaded
    fresh.load_state_dict(torchs.state_dict())
    torchs.update_parameters(net)
    ema_update(fresh, net)  # the loaded count (12) decides the decay, not the one mirrored before the load
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fresh.parameters(), torchs.parameters()))


def test_warmup_decay():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(10_000, 0.999) == 0.999
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999


def data(tmp_path):
    return SyntheticPairedDataModule(str(tmp_path / "syn"), num_train=12, num_val=4, num_test=4, image_size=36,
                                     load_size=36, crop_size=32, batch_size=4, num_workers=0)


def test_training_updates_the_average_after_every_g_step(tmp_path):
    model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5, "ema_warmup": False})
    seen = []

    class Record(__import__("lightning.pytorch").pytorch.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append([p.detach().clone() for p in pl_module.G.parameters()])

    quiet_trainer(max_steps=3, limit_val_batches=0, callbacks=[Record()]).fit(model, data(tmp_path))
    assert len(seen) == 3
    hand = seen[0]
    for weights in seen[1:]:
        hand = [0.5 * h + 0.5 * w for h, w in zip(hand, weights)]
    for e, h in zip(model.G_ema.module.parameters(), hand):
        assert torch.allclose(e, h, atol=1e-6)
    for (name, b_ema), b in zip(model.G_ema.module.named_buffers(), model.G.buffers()):
        assert torch.equal(b_ema, b), name  # batch-norm statistics are G's own
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.G_ema.parameters())


def test_inference_uses_the_average_when_asked(tmp_path):
    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5, "inference_mode": "eval"})
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(model, data(tmp_path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        from_ema, from_g = model.G_ema.module.eval()(x), model.G.eval()(x)
    assert not torch.allclose(from_ema, from_g, atol=1e-4)
    assert model.inference_G_name == "G_ema" and torch.allclose(model.generate(x), from_ema, atol=1e-6)
    plain = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5, "inference_mode": "eval", "use_ema_for_eval": False})
    plain.load_state_dict(model.state_dict())
    assert plain.inference_G_name == "G" and torch.allclose(plain.generate(x), from_g, atol=1e-6)
    # predict goes through generate: the EMA output by default
    out = model.predict_step({"source": x, "name": ["a.png", "b.png"]}, 0)["fake"]
    assert torch.allclose(out, from_ema, atol=1e-6)


def test_ema_starts_from_g_of_a_checkpoint_without_one(tmp_path):
    plain = Pix2Pix(**TINY_MODEL)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(plain, data(tmp_path))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    ckpt = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    with_ema = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.99})
    with_ema.on_load_checkpoint(ckpt)
    with_ema.load_state_dict(ckpt["state_dict"])  # strict: every key there
    for e, g in zip(with_ema.G_ema.module.state_dict().values(), plain.G.state_dict().values()):
        assert torch.equal(e, g)


def test_export_takes_the_average_unless_told_not_to(tmp_path):
    from pix2pix_lit.serving.export import export_checkpoint, load_exported

    torch.manual_seed(0)
    model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5})
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, data(tmp_path))
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for use_ema_for_eval, net in ((True, model.G_ema.module), (False, model.G)):
        path, contract = export_checkpoint(str(tmp_path / "ema.ckpt"), "torchscript", str(tmp_path / f"{use_ema_for_eval}.pt"),
                                           "eval", use_ema_for_eval)
        assert contract["generator"] == ("G_ema" if use_ema_for_eval else "G")
        run, _ = load_exported(path)
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(run(x)), net.eval()(x), atol=1e-5)


def test_the_test_report_names_the_scored_generator(tmp_path):
    import json

    from pix2pix_lit.callbacks import TestReport

    for use_ema, name in ((True, "G_ema"), (False, "G")):
        model = Pix2Pix(**{**TINY_MODEL, "ema_decay": 0.5, "use_ema_for_eval": use_ema})
        out = tmp_path / name
        quiet_trainer(callbacks=[TestReport(output_dir=str(out))]).test(model, data(tmp_path), verbose=False)
        assert json.loads((out / "metrics.json").read_text())["protocol"]["generator"] == name


def test_the_average_leaves_training_unchanged(tmp_path):
    """Why one run can compare G with G_ema 'at the same seed': with or without EMA, G and D train identically."""
    runs = []
    for ema in (None, 0.999):
        torch.manual_seed(0)
        model = Pix2Pix(**{**TINY_MODEL, "ema_decay": ema})
        quiet_trainer(max_steps=3, limit_val_batches=0, deterministic=True).fit(model, data(tmp_path))
        runs.append({k: v for k, v in model.state_dict().items() if not k.startswith("G_ema.")})
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
