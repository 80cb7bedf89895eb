"""GPU decoding and cutting for students: `decode: cuda` and `decode: cpu-crop-on-cuda`.

With `cuda`, workers read bytes, nvJPEG decodes and the GPU cuts the views. With
`cpu-crop-on-cuda`, workers decode with the teacher's decoder (`DecodedViewDataset`) and
the GPU cuts the views: exactly the teacher's pixels, one CPU decode per image whatever m.

With `cuda`, DataLoader workers read each image's file bytes and work out its m view
boxes (cached boxes, or the student's own crops from the JPEG header's size); they decode
nothing. In the main process a background thread hands each batch's JPEGs to
`torchvision.io.decode_jpeg(device="cuda")` (nvJPEG, one batched call) and, in both modes,
cuts every view of the batch with `views.replay_views_on_device` (the CPU path's box check
and exactly its antialiased resize, batched), on its own CUDA stream, a batch or two ahead
of training.

Files nvJPEG cannot read take the CPU decoder, with a log line: non-JPEG files and JPEGs
with other than 1 or 3 colour components (CMYK) are decoded and replayed in the worker;
JPEGs that nvJPEG refuses are decoded on the CPU in the decoding thread. A file that cannot
be read or decoded at all now (fine in the teacher pass, gone or damaged since) is left out
of its batch and listed in `ViewBatch.unreadable`, as on the CPU path.

nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so GPU-decoded pixels can
differ from what the teacher saw on the CPU by a few levels (`bench/student_data.py`
reports the difference on a GPU); the crop boxes, flips and resize are exactly the cached
views' (given the same decoded pixels, the views are equal to the CPU path's).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from pld_pipeline.decoding import (
    check_pixel_count,
    decode_rgb_bytes,
    is_jpeg,
    jpeg_header,
    read_bytes,
)
from pld_pipeline.errors import BadImageError
from pld_pipeline.student.data.cached_dataset import (
    SampledViews,
    StudentViewDataset,
    Unreadable,
    ViewBatch,
    ViewRef,
    resolve_views,
    split_unreadable,
)
from pld_pipeline.views import replay_views_on_device

logger = logging.getLogger(__name__)

GPU_COMPONENTS = (1, 3)  # greyscale and YCbCr JPEGs; CMYK/YCCK take the CPU


class EncodedImage(NamedTuple):
    """One image as a worker hands it over: JPEG bytes to decode on the GPU, the decoded
    image to cut on the GPU (`decode: cpu-crop-on-cuda`), or (for files the GPU does not
    take) views already decoded and replayed on the CPU.

    Attributes:
        jpeg: uint8 [n] file bytes, or None.
        pixels: uint8 [m, 3, S, S] views decoded and cut on the CPU, or None.
        teacher_pixels: the same at the teacher's size (online mode), or None.
        crops: int64 [m, 4] (top, left, h, w) of each view in source pixels.
        flips: bool [m].
        label, index: the sample's class and index.
        decoded: uint8 [3, H, W] the whole image decoded on the CPU, or None.
    """

    jpeg: torch.Tensor | None
    pixels: torch.Tensor | None
    teacher_pixels: torch.Tensor | None
    crops: torch.Tensor
    flips: torch.Tensor
    label: int
    index: int
    decoded: torch.Tensor | None = None

    @property
    def cut_on_device(self) -> bool:
        """Whether the device cuts this image's views (else the worker did)."""
        return self.jpeg is not None or self.decoded is not None


class EncodedViewDataset(StudentViewDataset):
    """(index, views) -> EncodedImage: the file's bytes and its view boxes, no decoding
    (except for files the GPU does not take, see the module docstring)."""

    def __getitem__(
        self, item: tuple[int, Sequence[ViewRef | SampledViews]]
    ) -> EncodedImage | Unreadable:
        i, refs = item
        try:
            return self._encoded(i, refs)
        except BadImageError as exc:
            return Unreadable.of(self.images, i, exc)

    def _encoded(self, i: int, refs: Sequence[ViewRef | SampledViews]) -> EncodedImage:
        name = str(self.images.path(i))
        data = read_bytes(name)
        header = jpeg_header(data) if is_jpeg(data) else None
        label = int(self.images.labels[i])
        if header is not None and header.components in GPU_COMPONENTS:
            check_pixel_count(header.height, header.width, name)  # PIL's limit, as on the CPU
            crops, flips = _boxes_to_tensors(resolve_views(refs, i, header.height, header.width))
            return EncodedImage(data, None, None, crops, flips, label, i)
        logger.info(
            "Decoding %s on the CPU: %s", self.images.keys[i],
            "not a JPEG" if header is None else f"a JPEG with {header.components} components",
        )  # fmt: skip
        pixels = decode_rgb_bytes(data, name)
        boxes = resolve_views(refs, i, pixels.shape[1], pixels.shape[2])
        student, teacher = self.replay(pixels, boxes)
        crops, flips = _boxes_to_tensors(boxes)
        return EncodedImage(None, student, teacher, crops, flips, label, i)


class DecodedViewDataset(StudentViewDataset):
    """(index, views) -> EncodedImage holding the whole decoded image and its view boxes
    (`decode: cpu-crop-on-cuda`).

    The worker decodes with the teacher's decoder (libjpeg-turbo, PIL for other files), so
    the views keep exactly the teacher's pixels, and leaves the m crops and resizes to the
    GPU (`replay_views_on_device`, equal to `replay_view`): a worker's work per image is
    one decode, whatever m is.
    """

    def __getitem__(
        self, item: tuple[int, Sequence[ViewRef | SampledViews]]
    ) -> EncodedImage | Unreadable:
        i, refs = item
        try:
            pixels = self.images.load_tensor(i)
        except BadImageError as exc:
            return Unreadable.of(self.images, i, exc)
        crops, flips = _boxes_to_tensors(resolve_views(refs, i, *pixels.shape[1:]))
        label = int(self.images.labels[i])
        return EncodedImage(None, None, None, crops, flips, label, i, decoded=pixels)


def _boxes_to_tensors(boxes: list) -> tuple[torch.Tensor, torch.Tensor]:
    crops = torch.tensor([c for c, _ in boxes], dtype=torch.int64).reshape(-1, 4)
    flips = torch.tensor([bool(f) for _, f in boxes], dtype=torch.bool)
    return crops, flips


class EncodedBatch(NamedTuple):
    """b encoded images; labels, index and slot already flattened to b * m rows."""

    images: list[EncodedImage]
    labels: torch.Tensor
    index: torch.Tensor
    slot: torch.Tensor
    unreadable: tuple[Unreadable, ...] = ()


def collate_encoded(items: list[EncodedImage | Unreadable]) -> EncodedBatch:
    """Collate `EncodedViewDataset` items; rows are image-major, as in `collate_views`.
    `Unreadable` items are left out and listed."""
    items, skipped = split_unreadable(items)
    return EncodedBatch(list(items), *_rows(items), unreadable=skipped)


def _rows(items: list[EncodedImage]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, index, slot) [b * m] of the images' rows, image-major."""
    if not items:
        return tuple(torch.zeros(0, dtype=torch.int64) for _ in range(3))
    m = items[0].crops.shape[0]
    count = torch.full((len(items),), m)
    return (
        torch.tensor([it.label for it in items]).repeat_interleave(count),
        torch.tensor([it.index for it in items]).repeat_interleave(count),
        torch.arange(m).repeat(len(items)),
    )


class GpuViewDecoder:
    """EncodedBatch -> ViewBatch on `device`: nvJPEG batch decode, then every view cut on
    the device. Works on the CPU too (libjpeg-turbo), which is how its tests run."""

    def __init__(
        self,
        device: torch.device,
        size: int,
        interpolation: str = "bilinear",
        teacher_size: int | None = None,
        teacher_interpolation: str = "bilinear",
    ) -> None:
        self.device = torch.device(device)
        self.size, self.interpolation = size, interpolation
        self.teacher_size, self.teacher_interpolation = teacher_size, teacher_interpolation
        self.cpu_fallbacks = 0  # JPEGs nvJPEG refused, decoded on the CPU instead

    def __call__(self, batch: EncodedBatch) -> ViewBatch:
        items, skipped = batch.images, batch.unreadable
        jpegs = iter(self.decode([it.jpeg for it in items if it.jpeg is not None],
                                 [it.index for it in items if it.jpeg is not None]))  # fmt: skip
        kept: list[tuple[EncodedImage, torch.Tensor | None]] = []
        for it in items:  # each image with its whole decoded image on the device, if any
            if it.jpeg is not None:
                pixels = next(jpegs)
                if isinstance(pixels, Unreadable):  # no decoder reads it now: left out
                    skipped += (pixels,)
                    continue
            else:
                pixels = (
                    None if it.decoded is None else it.decoded.to(self.device, non_blocking=True)
                )
            kept.append((it, pixels))
        if len(kept) < len(items):
            items = [it for it, _ in kept]
            batch = EncodedBatch(items, *_rows(items), unreadable=skipped)
        if not items:
            return self._empty(batch)
        on_gpu = [j for j, it in enumerate(items) if it.cut_on_device]
        decoded = [kept[j][1] for j in on_gpu]
        student = self._views(items, on_gpu, decoded, "pixels", self.size, self.interpolation)
        teacher = None
        if self.teacher_size is not None:
            teacher = self._views(items, on_gpu, decoded, "teacher_pixels",
                                  self.teacher_size, self.teacher_interpolation)  # fmt: skip
        return ViewBatch(
            images=student,
            labels=batch.labels.to(self.device, non_blocking=True),
            index=batch.index,
            slot=batch.slot,
            teacher_images=teacher,
            unreadable=skipped,
        )

    def _empty(self, batch: EncodedBatch) -> ViewBatch:
        """A batch whose every image was unreadable: no rows."""

        def none(size: int) -> torch.Tensor:
            return torch.zeros(0, 3, size, size, dtype=torch.uint8, device=self.device)

        teacher = None if self.teacher_size is None else none(self.teacher_size)
        return ViewBatch(none(self.size), batch.labels.to(self.device), batch.index, batch.slot,
                         teacher, batch.unreadable)  # fmt: skip

    def _views(
        self,
        items: list[EncodedImage],
        on_gpu: list[int],
        decoded: list[torch.Tensor],
        done_field: str,
        size: int,
        mode: str,
    ) -> torch.Tensor:
        """Every item's views in item order: the decoded ones cut in one batched call, the
        ones the workers already cut (`done_field`) moved over."""
        owner = [k for k, j in enumerate(on_gpu) for _ in range(len(items[j].flips))]
        crops = [c for j in on_gpu for c in items[j].crops.tolist()]
        flips = [f for j in on_gpu for f in items[j].flips.tolist()]
        cut = replay_views_on_device(decoded, owner, crops, flips, size, mode) if decoded else None
        parts, row = [], 0
        for item in items:
            m = len(item.flips)
            if item.cut_on_device:
                parts.append(cut[row : row + m])
                row += m
            else:
                parts.append(getattr(item, done_field).to(self.device, non_blocking=True))
        return torch.cat(parts)

    def decode(
        self, jpegs: list[torch.Tensor], names: Sequence[Any]
    ) -> list[torch.Tensor | Unreadable]:
        """Decode JPEG bytes on the device in one batched call; a file the decoder refuses
        is decoded on the CPU (libjpeg-turbo, then PIL) and logged.

        Returns:
            uint8 [3, H, W] per file, on the device; `Unreadable` (index, "sample <name>",
            reason) for a file the CPU cannot decode either.
        """
        if not jpegs:
            return []
        try:
            return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass  # one bad file fails the whole batch: find it
        out = []
        for data, name in zip(jpegs, names, strict=True):
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError as exc:
                self.cpu_fallbacks += 1
                logger.warning(
                    "The GPU decoder cannot read sample %s (%s); decoding it on the CPU.",
                    name, str(exc).splitlines()[0][:200],
                )  # fmt: skip
                try:
                    out.append(decode_rgb_bytes(data, f"sample {name}").to(self.device))
                except BadImageError as bad:
                    out.append(Unreadable(int(name), f"sample {name}", bad.reason))
        return out


class DeviceBatches:
    """Decode batches a few ahead in a background thread, on a CUDA stream of their own.

    Iterating yields ViewBatches whose tensors are ready for the current stream: it waits
    for the decoding stream on the device (an event), never on the host. An exception
    in the thread is raised in the consumer.
    """

    _END = object()

    def __init__(self, decoder: GpuViewDecoder, ahead: int = 2) -> None:
        self.decoder = decoder
        self.ahead = ahead

    def __call__(self, batches: Iterator[EncodedBatch]) -> Iterator[ViewBatch]:
        results: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()
        cuda = self.decoder.device.type == "cuda"
        stream = torch.cuda.Stream(self.decoder.device) if cuda else None

        def work() -> None:
            try:
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    for encoded in batches:
                        batch = self.decoder(encoded)
                        event = torch.cuda.Event() if cuda else None
                        if cuda:
                            event.record(stream)
                        if not _put(results, (batch, event), stop):
                            return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                _put(results, exc, stop)
                return
            _put(results, self._END, stop)

        thread = threading.Thread(target=work, name="pld-gpu-decode", daemon=True)
        thread.start()
        try:
            while True:
                got = results.get()
                if got is self._END:
                    return
                if isinstance(got, BaseException):
                    raise got
                batch, event = got
                if cuda:
                    current = torch.cuda.current_stream(self.decoder.device)
                    current.wait_event(event)
                    for t in (batch.images, batch.labels, batch.teacher_images):
                        if t is not None and t.is_cuda:
                            t.record_stream(current)  # its memory is not reused too early
                yield batch
        finally:
            stop.set()
            thread.join(timeout=10)


def _put(results: queue.Queue, value: Any, stop: threading.Event) -> bool:
    """Put unless the consumer has gone (then False)."""
    while not stop.is_set():
        try:
            results.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
