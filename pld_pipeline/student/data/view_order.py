"""Where an image's m views train: side by side in one batch, or spread over m neighbouring batches.

The loader decodes b = B / m images per batch and emits their m views image-major, so
each batch holds b distinct images (`views_layout: same_batch`). With `spread` (the
default) m consecutive loader batches are regrouped on the device into m batches of B
distinct images each, batch j holding view slot j of all of them: every image is still
decoded once, its views train in m neighbouring steps, and a step's gradient averages
over as many distinct images as with m = 1 (on the demo, same-batch views cost about a
point of top-1 at equal samples seen; bench/views_accuracy.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from pld_pipeline.student.data.cached_dataset import ViewBatch

VIEWS_LAYOUTS = ("spread", "same_batch")


def resume_offsets(steps_done: int, views_per_image: int, layout: str) -> tuple[int, int]:
    """(loader batches to skip, regrouped batches to drop) to continue after `steps_done`.

    Spread batches come in groups of m regrouped from m loader batches, so a resumed
    epoch restarts its loader at the group's first batch and drops the group's batches
    that were already trained.
    """
    if layout == "spread" and views_per_image > 1:
        m = views_per_image
        return steps_done // m * m, steps_done % m
    return steps_done, 0


def spread_views(
    batches: Iterable[ViewBatch],
    views_per_image: int,
    device: torch.device,
    drop_first: int = 0,
) -> Iterator[ViewBatch]:
    """Regroup image-major batches (b images x m views) so each holds one view of m * b
    distinct images; an image's views land in m consecutive batches.

    Images, labels and teacher images move to `device` first (from pinned memory, without
    waiting) and are regrouped there; index and slot stay on the host. A group cut short
    by the end of the epoch is regrouped the same way into as many batches as it has.

    Args:
        batches: ViewBatches, rows image-major (`collate_views` order); equal sizes
            except where unreadable images were left out.
        views_per_image: m.
        device: where the regrouped tensors live.
        drop_first: regrouped batches to leave out at the start (a mid-group resume).
    """
    group: list[ViewBatch] = []
    produced = 0
    for batch in batches:
        group.append(_on_device(batch, device))
        if len(group) == views_per_image:
            for out in _regroup(group, views_per_image):
                if produced >= drop_first:
                    yield out
                produced += 1
            group = []
    if group:
        for out in _regroup(group, views_per_image):
            if produced >= drop_first:
                yield out
            produced += 1


def _on_device(batch: ViewBatch, device: torch.device) -> ViewBatch:
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device, non_blocking=True)

    return batch._replace(
        images=move(batch.images), labels=move(batch.labels),
        teacher_images=move(batch.teacher_images),
    )  # fmt: skip


def _regroup(group: list[ViewBatch], m: int) -> list[ViewBatch]:
    """The group's rows slot-major (slot j of every image, images in order), cut into as
    many near-equal batches as the group has: with m full batches, batch j is exactly slot
    j. Batches short of unreadable images regroup the same way; their `unreadable` go with
    the first batch."""
    g = len(group)
    skipped = tuple(u for batch in group for u in batch.unreadable)
    full = [batch for batch in group if len(batch.index)]
    if not full:  # every image of the group was unreadable
        return [group[0]._replace(unreadable=skipped)] + [
            b._replace(unreadable=()) for b in group[1:]
        ]
    slot = torch.cat([batch.slot for batch in full])
    chunks = torch.tensor_split(torch.argsort(slot, stable=True), g)

    def cut(name: str) -> list[torch.Tensor]:
        joined = torch.cat([getattr(batch, name) for batch in full])
        return [joined[rows.to(joined.device)] for rows in chunks]

    names = ["images", "labels", "index", "slot"]
    if full[0].teacher_images is not None:
        names.append("teacher_images")
    fields = {name: cut(name) for name in names}
    return [
        ViewBatch(
            **{name: parts[k] for name, parts in fields.items()},
            unreadable=skipped if k == 0 else (),
        )  # fmt: skip
        for k in range(g)
    ]
