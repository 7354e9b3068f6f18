"""pix2pix_lit.optim.Adam: torch's Adam update (a hand-checked reference), on the fused kernel, any weight layout."""

import copy

import pytest
import torch
import torch.nn as nn

from pix2pix_lit.optim import Adam


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 3, 4, 2, 1))


def reference_adam(p: torch.Tensor, grads: list[torch.Tensor], lr=2e-4, b1=0.5, b2=0.999, eps=1e-8) -> torch.Tensor:
    """Kingma & Ba, Algorithm 1, in float64."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p


@pytest.mark.parametrize("channels_last", [False, True])
def test_three_steps_equal_the_paper_update_and_keep_the_layout(channels_last):
    net = convnet()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    assert opt.param_groups[0]["fused"] is True  # CPU: torch has the kernel
    grads = {n: [torch.randn_like(p) for _ in range(3)] for n, p in net.named_parameters()}
    for step in range(3):
        for n, p in net.named_parameters():
            p.grad = grads[n][step].clone()
        opt.step()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.double(), reference_adam(start[n], grads[n]), rtol=0, atol=1e-7)
        assert p.is_contiguous(memory_format=torch.channels_last if p.dim() == 4 and channels_last else
                               torch.contiguous_format), n


def test_channels_last_weights_reach_the_kernel_as_contiguous_views_of_the_same_memory():
    net = convnet().to(memory_format=torch.channels_last)
    opt = Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # creates the moment buffers (channels_last, like their weights)
    lists = [[] for _ in range(6)]
    opt._init_group(opt.param_groups[0], *lists)
    params = lists[0]
    weights = [p for p in net.parameters() if p.dim() == 4]
    assert len(weights) == 2
    for w in weights:
        given = next(t for t in params if t.data_ptr() == w.data_ptr())
        assert given.is_contiguous() and given.numel() == w.numel()


def test_a_checkpoint_of_the_unfused_optimizer_loads_without_switching_the_kernel_off():
    net = convnet()
    old = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))  # as checkpoints before the change
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    new = Adam(copy.deepcopy(net).parameters(), lr=2e-4, betas=(0.5, 0.999))
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["fused"] is True and new.param_groups[0]["foreach"] is None
    assert new.param_groups[0]["lr"] == 2e-4 and len(new.state) == len(old.state)


def test_the_models_train_with_it():
    from pix2pix_lit.models import CycleGAN, Pix2Pix

    for model in (Pix2Pix(netG="unet_128", ngf=8, ndf=8, fid=False, kid=False), CycleGAN(netG="resnet_6blocks", ngf=8, ndf=8,
                                                                          fid=False, kid=False)):
        optimizers = model.configure_optimizers()
        optimizers = optimizers[0] if isinstance(optimizers, tuple) else optimizers
        opts = [o["optimizer"] if isinstance(o, dict) else o for o in optimizers]
        assert opts and all(isinstance(o, Adam) and o.param_groups[0]["fused"] for o in opts)


class _Strategy:
    """What guarded_step asks of Lightning's strategy: the step, and the sum of a flag over processes (here the
    other process's flag is ``others``)."""

    def __init__(self, others: float = 0.0) -> None:
        self.others, self.steps = others, 0

    def optimizer_step(self, optimizer, closure):
        self.steps += 1
        optimizer.step()

    def reduce(self, t, reduce_op):
        assert reduce_op == "sum"
        return t + self.others


def _net_and_opt(fused: bool):
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = Adam(net.parameters(), lr=0.1, betas=(0.5, 0.999)) if fused else torch.optim.SGD(net.parameters(), lr=0.1)
    return net, opt


def _state(net, opt):
    return [t.clone() for t in net.parameters()] + [s.clone() for st in opt.state.values() for s in st.values()]


@pytest.mark.parametrize("fused", [True, False])
def test_guarded_step_skips_a_non_finite_loss_and_takes_a_finite_one_as_plain_torch_does(fused):
    from pix2pix_lit.optim import guarded_step

    net, opt = _net_and_opt(fused)
    x = torch.randn(5, 4)
    strategy = _Strategy()
    assert float(guarded_step(opt, net(x).pow(2).mean(), lambda loss: loss.backward(), strategy)) == 0.0
    before = _state(net, opt)
    flag = guarded_step(opt, net(x).sum() * float("nan"), lambda loss: loss.backward(), strategy)
    assert float(flag) == 1.0 and flag.dim() == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _state(net, opt)))  # weights, moments, step count
    # a finite loss after the skip: the same update plain torch makes from the same state
    ref_net, ref_opt = copy.deepcopy((net, opt))  # one copy: the optimizer holds the copied parameters
    ref_opt.zero_grad()
    ref_net(x).pow(2).mean().backward()
    ref_opt.step()
    guarded_step(opt, net(x).pow(2).mean(), lambda loss: loss.backward(), strategy)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(net.parameters(), ref_net.parameters()))


def test_guarded_step_skips_on_every_process_when_another_process_saw_nan():
    from pix2pix_lit.optim import guarded_step

    net, opt = _net_and_opt(fused=True)
    x = torch.randn(5, 4)
    guarded_step(opt, net(x).pow(2).mean(), lambda loss: loss.backward(), _Strategy())
    before = _state(net, opt)
    flag = guarded_step(opt, net(x).pow(2).mean(), lambda loss: loss.backward(), _Strategy(others=1.0), world_size=2)
    assert float(flag) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _state(net, opt)))


def test_under_a_grad_scaler_the_step_is_left_to_the_scaler():
    from pix2pix_lit.optim import guarded_step

    net, opt = _net_and_opt(fused=True)
    strategy = _Strategy()
    flag = guarded_step(opt, net(torch.randn(5, 4)).sum() * float("inf"), lambda loss: loss.backward(), strategy,
                        scaler=object())
    assert float(flag) == 1.0 and strategy.steps == 1  # handed to the precision plugin, whose scaler skips it


def test_a_plateau_policy_without_its_metric_is_refused_in_one_line():
    from pix2pix_lit.errors import ConfigError
    from pix2pix_lit.optim import make_scheduler, step_schedulers

    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    plateau = make_scheduler(opt, "plateau", 1, 1, 1, "val/fid")
    with pytest.raises(ConfigError, match="watches 'val/fid', which was not logged; set model.plateau_monitor"):
        step_schedulers([plateau], {}, "val/fid")
    for _ in range(7):  # FID (lower is better) stalled past the patience of 5: x0.2
        step_schedulers(plateau, {"val/fid": 10.0}, "val/fid")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
