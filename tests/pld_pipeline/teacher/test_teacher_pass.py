"""Teacher pass: records against an independent float64 forward, same pixels for the student,
bad images, non-finite teachers, K > C, and a real pretrained teacher on real photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from images_testlib import CORRUPT_KEY
from torch import nn

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import BadImageError, ConfigError, NonFiniteTeacherError
from pld_pipeline.teacher.compute import compute_shard, compute_views
from pld_pipeline.teacher.models import create_model, resolve_preprocess
from pld_pipeline.teacher.options import PassOptions
from pld_pipeline.teacher.zoo import tiny_convnet
from pld_pipeline.views import normalize_batch, replay_view, sample_view

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)
SIZE = 24
TEMPS = (1.0, 2.0, 0.5)
REPLAY = storage.ViewInfo("replay", 3, 5, (0.08, 1.0), (3 / 4, 4 / 3), 0.875)
EVAL = storage.ViewInfo("eval", 1, 0, (0.08, 1.0), (3 / 4, 4 / 3), 0.875)
TINY = storage.TeacherInfo("tiny", "none", "", 3, SIZE, MEAN, STD, "bilinear")


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = tiny_convnet(num_classes=3, width=6)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        model[-1].weight.mul_(8)  # spread the logits so top-K order is clear
    return model.eval()


def _run(
    model: nn.Module,
    data: ImageFolderDataset,
    info: storage.ViewInfo = REPLAY,
    view: int = 1,
    fmt: str = "topk",
    k: int = 2,
    spec=None,
    **options,
) -> dict:
    """The pass over all of `data` for a manifest of this file's teacher (or `spec`)."""
    spec = spec or _manifest(data, k=k if fmt == "topk" else 0, views=info, fmt=fmt)
    options = PassOptions(**({"device": "cpu", "batch_size": 4} | options))
    return compute_shard(model, data, spec, view, 0, len(data), options)


def _reference_logits(model: nn.Module, data: ImageFolderDataset, rec: dict) -> torch.Tensor:
    """float64 forward of a float64 copy of the model, one image at a time, on pixels replayed
    from the record's own crop/flip, normalised by hand."""
    ref = _copy64(model)
    rows = []
    for i in range(len(data)):
        pixels = replay_view(
            data.load_rgb(i), rec["crop"][i], bool(rec["flip"][i]), SIZE, "bilinear"
        )
        x = (
            pixels.double() / 255 - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]
        ) / torch.tensor(STD, dtype=torch.float64)[:, None, None]
        with torch.no_grad():
            rows.append(ref(x[None])[0])
    return torch.stack(rows)


def _copy64(model: nn.Module) -> nn.Module:
    clone = tiny_convnet(num_classes=3, width=6)
    clone.load_state_dict(model.state_dict())
    return clone.double().eval()


def test_topk_records_equal_an_independent_forward(
    teacher: nn.Module, tiny_imagefolder: Path
) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    rec = _run(teacher, data)
    n = len(data)
    for i in range(n):  # views come from (seed, view, index) alone
        h, w = rec["hw"][i]
        expected = sample_view("replay", 5, 1, i, int(h), int(w), REPLAY.scale, REPLAY.ratio)
        assert (tuple(rec["crop"][i].tolist()), bool(rec["flip"][i])) == expected
    z = _reference_logits(teacher, data, rec)
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    order = torch.argsort(z, dim=1, descending=True)[:, :2]
    assert np.array_equal(rec["topk_idx"], order.numpy())
    assert np.allclose(rec["topk_logp"], torch.gather(logp, 1, order).numpy(), atol=1e-4)
    for j, t in enumerate(TEMPS):
        assert np.allclose(rec["lse"][:, j], torch.logsumexp(z / t, dim=1).numpy(), atol=1e-4)
    labels = torch.as_tensor(data.labels, dtype=torch.int64)
    assert np.allclose(rec["gt_logit"], z[torch.arange(n), labels].numpy(), atol=1e-4)
    assert rec["topk_idx"].dtype == np.int32
    assert rec["topk_logp"].dtype == np.float32
    assert rec["crop"].shape == (n, 4)
    assert rec["flip"].dtype == np.uint8
    assert not rec["bad"].any()
    assert rec["hw"].tolist() == [list(data.load_rgb(i).size[::-1]) for i in range(n)]


def test_full_logits_and_eval_view(teacher: nn.Module, tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    rec = _run(teacher, data, info=EVAL, view=0, fmt="full")
    assert set(rec) == {"logits", "lse", "gt_logit", "crop", "flip", "bad", "hw"}
    z = _reference_logits(teacher, data, rec)
    assert np.allclose(rec["logits"], z.numpy(), atol=1e-4)
    h, w = rec["hw"][0]
    side = round(min(h, w) * 0.875)
    assert rec["crop"][0].tolist() == [round((h - side) / 2), round((w - side) / 2), side, side]
    assert not rec["flip"].any()


@pytest.mark.parametrize("workers", [0, 2])  # 2: the CPU workers normalise
def test_student_replay_gives_the_teacher_pixels(
    teacher: nn.Module, tiny_imagefolder: Path, workers: int
) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    seen = []
    hook = teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        rec = _run(teacher, data, batch_size=5, num_workers=workers)
    finally:
        hook.remove()
    teacher_inputs = torch.cat(seen)
    # A student later: the stored crop and flip, replayed at the teacher's size.
    student = torch.stack(
        [
            replay_view(data.load_rgb(i), rec["crop"][i], bool(rec["flip"][i]), SIZE, "bilinear")
            for i in range(len(data))
        ]
    )
    assert torch.equal(normalize_batch(student, MEAN, STD), teacher_inputs)
    # ...and the same box at the student's own size (another resolution, same view).
    small = replay_view(data.load_rgb(3), rec["crop"][3], bool(rec["flip"][3]), 12, "bilinear")
    assert small.shape == (3, 12, 12)


def test_views_share_one_decode_and_match_single_view_calls(
    teacher: nn.Module, tiny_imagefolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    decodes = []
    real = data.load_tensor
    monkeypatch.setattr(data, "load_tensor", lambda i: decodes.append(i) or real(i))
    spec = _manifest(data, k=3)
    together = compute_views(teacher, data, spec, [0, 2], 2, 9, PassOptions(batch_size=6))
    assert sorted(decodes) == list(range(2, 9))
    for v in (0, 2):
        alone = compute_shard(teacher, data, spec, v, 2, 9, PassOptions(batch_size=3))
        for name, value in alone.items():
            assert np.allclose(together[v][name], value, atol=1e-5), (v, name)


def test_workers_give_the_same_records(teacher: nn.Module, tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    single = _run(teacher, data, num_workers=0, batch_size=4)
    multi = _run(teacher, data, num_workers=2, batch_size=4)
    for name, value in single.items():
        assert np.array_equal(multi[name], value), name


def test_corrupt_image_stops_or_is_recorded_bad(
    teacher: nn.Module, tiny_imagefolder_corrupt: Path
) -> None:
    data = ImageFolderDataset(tiny_imagefolder_corrupt)
    bad_row = data.keys.index(CORRUPT_KEY)
    for workers in (0, 2):
        with pytest.raises(
            BadImageError, match=r"stopped: Cannot use image .*zz_corrupt\.jpg.: cannot be decoded"
        ):
            _run(teacher, data, num_workers=workers)
    rec = _run(teacher, data, skip_bad_images=True)
    assert rec["bad"].tolist() == [i == bad_row for i in range(len(data))]
    good = [i for i in range(len(data)) if i != bad_row]
    clean = ImageFolderDataset(tiny_imagefolder_corrupt)
    z = _reference_logits(teacher, _Subset(clean, good), {k: v[good] for k, v in rec.items()})
    assert np.allclose(
        rec["gt_logit"][good],
        z[torch.arange(len(good)), torch.as_tensor(data.labels[good], dtype=torch.int64)].numpy(),
        atol=1e-4,
    )
    if hasattr(storage, "create"):  # the writer accepts the bad row's filler
        manifest = _manifest(data, k=2)
        writer = storage.create(
            str(Path(str(tiny_imagefolder_corrupt) + "_cache")),
            manifest,
            data.keys,
            data.labels,
            overwrite=True,
        )
        assert writer.write_shard(1, 0, rec) is True


class _Subset:
    """Rows `rows` of a dataset, for the float64 reference."""

    def __init__(self, data: ImageFolderDataset, rows: list[int]) -> None:
        self.data, self.rows = data, rows

    def __len__(self) -> int:
        return len(self.rows)

    def load_rgb(self, i: int):
        return self.data.load_rgb(self.rows[i])


def _manifest(
    data: ImageFolderDataset,
    k: int,
    views: storage.ViewInfo = REPLAY,
    fmt: str = "topk",
    temperatures: tuple[float, ...] = TEMPS,
    teacher: storage.TeacherInfo = TINY,
) -> storage.Manifest:
    """The spec of a pass over all of `data` (one shard)."""
    return storage.Manifest(
        teacher=teacher,
        views=views,
        format=fmt,
        k=k,
        temperatures=temperatures,
        dataset_fingerprint=data.fingerprint(),
        num_samples=len(data),
        shard_size=len(data),
    )


class _NaNOnCall(nn.Module):
    """Returns NaN logits for the `bad_call`-th forward (one sample per batch)."""

    def __init__(self, inner: nn.Module, bad_call: int) -> None:
        super().__init__()
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.calls += 1
        return torch.full_like(out, float("nan")) if self.calls - 1 == self.bad_call else out


def test_non_finite_teacher_is_refused_naming_the_sample(
    teacher: nn.Module, tiny_imagefolder: Path
) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    with pytest.raises(NonFiniteTeacherError, match="NaN/Inf") as info:
        _run(_NaNOnCall(teacher, bad_call=6), data, batch_size=1)
    assert repr(data.keys[6]) in str(info.value)
    assert repr(data.keys[5]) not in str(info.value)
    assert isinstance(info.value, FloatingPointError)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"k": 4}, "k=4 is larger than the teacher's 3 classes"),
        ({"k": 0}, "k must be >= 1"),
        ({"format": "dense"}, "Unknown cache format"),
        ({"temperatures": (1.0, 0.0)}, "positive"),
    ],
)
def test_bad_outputs_are_refused(
    teacher: nn.Module, tiny_imagefolder: Path, kw: dict, fragment: str
) -> None:
    """The pass's own guard, for a spec that is not a validated storage.Manifest (which
    refuses these too)."""
    data = ImageFolderDataset(tiny_imagefolder)
    valid = _manifest(data, k=2)
    fields = {f.name: getattr(valid, f.name) for f in dataclasses.fields(valid)}
    with pytest.raises(storage.InvalidManifestError):
        storage.Manifest(**(fields | kw))
    with pytest.raises(ConfigError, match=fragment):
        _run(teacher, data, spec=SimpleNamespace(**(fields | kw)))


def test_views_outside_the_spec_are_refused(teacher: nn.Module, tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    with pytest.raises(ConfigError, match="not distinct indices in \\[0, 3\\)"):
        _run(teacher, data, view=3)


def test_labels_beyond_the_teacher_are_refused(tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    two_class = tiny_convnet(num_classes=2)
    with pytest.raises(ConfigError, match="Labels span \\[0, 2\\] but the teacher has 2 classes"):
        _run(two_class, data, k=1)


@pytest.mark.slow  # a real 1000-class network over full-size photos
def test_pretrained_efficientnet_lite0_on_real_photos(real_photos: Path) -> None:
    name = "pld_pipeline.teacher.zoo:efficientnet_lite0"
    model = create_model(name)
    pre = resolve_preprocess(name, model)
    data = ImageFolderDataset(real_photos, classes=["astronaut", "cat", "coffee", "rocket"])
    views = storage.ViewInfo("eval", 1, 0, (0.08, 1.0), (0.75, 4 / 3), pre.crop_pct)
    info = storage.TeacherInfo(
        name, "none", "", 1000, pre.input_size, pre.mean, pre.std, pre.interpolation
    )
    spec = _manifest(data, k=5, views=views, temperatures=(1.0,), teacher=info)
    rec = compute_shard(model, data, spec, 0, 0, len(data), PassOptions(batch_size=4))
    top1 = dict(zip(data.keys, rec["topk_idx"][:, 0].tolist(), strict=True))
    assert 281 <= top1["cat/chelsea.jpg"] <= 285  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert top1["coffee/coffee.jpg"] in (504, 967, 968)  # coffee mug, espresso, cup
    assert top1["rocket/rocket.jpg"] in (657, 744, 812)  # missile, projectile, space shuttle
    assert np.exp(rec["topk_logp"][:, 0]).min() > 0.1  # confident, not noise


@pytest.mark.parametrize("temps", [(2.0,), (1.0, 4.0), (0.5, 1.0)])
def test_logits_to_records_against_float64(temps: tuple[float, ...]) -> None:
    from pld_pipeline.teacher.outputs import logits_to_records, placeholder_records

    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 50, generator=g) * 4
    labels = torch.tensor([0, 49, 3, 3, 17, 8])
    rec = logits_to_records(z, labels, "topk", 7, temps)
    z64 = z.double()
    order = torch.argsort(z64, dim=1, descending=True)[:, :7]
    assert torch.equal(rec["topk_idx"], order)
    logp = z64 - torch.logsumexp(z64, dim=1, keepdim=True)
    assert torch.allclose(rec["topk_logp"].double(), logp.gather(1, order), atol=1e-5)
    for j, t in enumerate(temps):
        assert torch.allclose(rec["lse"][:, j].double(), torch.logsumexp(z64 / t, 1), atol=1e-5)
    assert torch.equal(rec["gt_logit"], z[torch.arange(6), labels])
    filler = placeholder_records(2, 50, "topk", 7, temps)
    assert torch.allclose(filler["topk_logp"], torch.full((2, 7), -np.log(50.0)))
    assert torch.allclose(filler["lse"], torch.full((2, len(temps)), float(np.log(50.0))))
