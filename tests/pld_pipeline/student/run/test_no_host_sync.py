"""No host sync per training step: counted on a stand-in device, for every loss.

The step runs with model and targets on PyTorch's `meta` device, which has shapes but no
values, under a dispatch mode that counts every read-back: `aten._local_scalar_dense`
(what `.item()`, `bool(t)`, `int(t)` and `float(t)` call) of a device tensor (reading a
host tensor, such as an optimizer's step count, waits for nothing) and every copy from the device to
the CPU (`.cpu()`, `.tolist()`, `.to("cpu")`); `.numpy()` of a meta tensor raises. A
control checks the counter sees each of those. On a GPU, `bench/gpu.sh` also runs a step
under `torch.cuda.set_sync_debug_mode("error")` (tests marked `cuda`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import storage
from pld_pipeline.configs.train import OptimConfig
from pld_pipeline.demo.small_models import tiny_cnn
from pld_pipeline.losses import LOSS_NAMES, make_loss
from pld_pipeline.losses.pld_kernel import _RankedPLD, ranked_pld
from pld_pipeline.student.data.cached_dataset import ViewBatch, gather_targets
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.optim import make_optimizer, make_scheduler
from pld_pipeline.student.run.placement import Placement
from pld_pipeline.student.run.train import Step, train_one_epoch, train_step

META = torch.device("meta")


class ReadBacks(TorchDispatchMode):
    """Counts reads of device values by the host; answers them with zeros so work goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.calls.append("item")
            return False if args[0].dtype == torch.bool else 0
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if src.device.type == "meta" and dst is not None and torch.device(dst).type == "cpu":
                self.calls.append("device-to-host")
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        return func(*args, **kwargs)


def test_the_counter_sees_every_kind_of_read_back():
    t = torch.ones(3, device=META)
    with ReadBacks() as counter:
        t.sum().item()
        bool(t.sum() > 0)
        int(t[0])
        t.cpu()
        t.tolist()
        t.to("cpu")
    assert counter.calls == ["item", "item", "item"] + ["device-to-host"] * 3
    with pytest.raises((TypeError, RuntimeError, NotImplementedError)):
        t.numpy()


@pytest.fixture(scope="module")
def slab(replay_cache):
    return storage.open_cache(replay_cache).load_view(0)


def _step(loss_name: str, clip: float | None = None, optim: str = "sgd") -> Step:
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=6).to(META)
    cfg = OptimConfig(name=optim, lr=0.05, clip_grad_norm=clip)
    optimizer = make_optimizer(model, cfg)
    placement = Placement(META, None, False, (0.5,) * 3, (0.25,) * 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return Step(model, make_loss(loss_name), optimizer, make_scheduler(optimizer, cfg, 1, 10),
                scaler, placement, clip, "compact")  # fmt: skip


def _batch(slab, start: int, size: int = 8) -> ViewBatch:
    index = torch.arange(start, start + size) % len(slab)
    return ViewBatch(
        images=torch.randint(0, 256, (size, 3, 16, 16), dtype=torch.uint8),
        labels=torch.as_tensor(slab.label[index.numpy()], dtype=torch.int64),
        index=index,
        slot=torch.zeros(size, dtype=torch.int64),
    )


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_a_training_step_reads_nothing_back(loss, slab):
    step = _step(loss, clip=1.0)
    with ReadBacks() as counter:
        for j in range(3):
            train_step(step, _batch(slab, 8 * j), [slab])
    assert counter.calls == []


@pytest.mark.parametrize("optim", ["adamw", "lamb"])
def test_other_optimizers_read_nothing_back(optim, slab):
    step = _step("pld", optim=optim)
    with ReadBacks() as counter:
        train_step(step, _batch(slab, 0), [slab])
    assert counter.calls == []


def test_an_epoch_reads_back_only_at_logging_intervals_and_at_its_end(slab):
    counts = {}
    for steps, log_every in ((3, 100), (6, 100), (6, 2)):
        step = _step("pld")
        batches = [_batch(slab, 8 * j) for j in range(steps)]
        with ReadBacks() as counter:
            train_one_epoch(step, batches, [slab], 0, log_every, DistContext())
        counts[(steps, log_every)] = len(counter.calls)
    end = counts[(3, 100)]
    assert end > 0
    assert counts[(6, 100)] == end
    per_log = (counts[(6, 2)] - end) / 3  # three logging points in six steps
    assert per_log == int(per_log)
    assert 0 < per_log <= 3


def test_the_step_keeps_the_losses_value_checks_off_but_shape_checks_on(slab):
    step = _step("pld")
    bad = _batch(slab, 0)
    bad = bad._replace(labels=bad.labels[:-1])  # 7 labels for 8 images
    with pytest.raises(Exception, match="labels must have shape"):
        train_step(step, bad, [slab])


def test_on_device_pld_kernel_equals_the_read_back_kernel():
    # The GPU path of ranked_pld works in float64 without reading the spread flag back;
    # run it here on CPU tensors and compare with the float64 path that does read it.
    g = torch.Generator().manual_seed(0)
    b, c, k = 6, 12, 4
    student = torch.randn(b, c, generator=g, dtype=torch.float64)
    label = torch.randint(0, c, (b,), generator=g)
    idx = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(b)])
    invalid = idx == label[:, None]
    weight = torch.rand(b, k, generator=g, dtype=torch.float64).masked_fill(invalid, 0) * 0.1
    label_weight = torch.rand(b, generator=g, dtype=torch.float64) * 0.5
    for unranked, tail in (("rest", None),):
        s1 = student.clone().requires_grad_()
        s2 = student.clone().requires_grad_()
        ref = ranked_pld(s1, label, label_weight, idx, weight, invalid, unranked, tail)
        got, flag = _RankedPLD.apply(s2, label, label_weight, idx, weight, invalid, unranked,
                                     tail, torch.float64, True)  # fmt: skip
        ref.backward()
        got.backward()
        assert bool(flag)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-12, atol=1e-12)
    # Past float64's range the on-device path stays finite instead of switching domain.
    wide = student.clone()
    wide[:, :] = -1e4
    wide[torch.arange(b), label] = 1e4
    s3 = wide.requires_grad_()
    got, flag = _RankedPLD.apply(s3, label, label_weight, idx, weight, invalid, "rest", None,
                                 torch.float64, True)  # fmt: skip
    got.backward()
    assert not bool(flag)
    assert torch.isfinite(got)
    assert torch.isfinite(s3.grad).all()


def test_gathered_targets_for_a_device_are_compact_until_there(slab):
    t = gather_targets([slab, slab], np.arange(4), "compact", META, slot=np.array([0, 1, 0, 1]))
    assert t.topk_idx.device.type == "meta"
    assert t.topk_idx.dtype == torch.int64
