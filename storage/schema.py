"""The on-disk layout: array names, shapes, dtypes, chunks, fill values and codecs.

Every per-view array is chunked ``(1, shard_size, ...)``: one (view, shard) write
touches exactly one chunk of each array, so writers never share a chunk and need
no lock. ``done`` is chunked ``(1, 1)`` so each shard writer owns its done bit.
See storage/README.md for the same table in prose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from storage.manifest import Manifest
from storage.q8_layout import q8_layout, stored_temperatures

ATTR_MANIFEST = "pld_cache"
ATTR_SCHEMA_VERSION = "schema_version"
DEFAULT_SHARD_SIZE = 8192
# float16 range: larger magnitudes become inf when stored.
FLOAT16_MAX = 65504.0
INT16_MAX_CLASSES = 32767

UINT16_MAX = 65535
# Arrays indexed [V, N, ...], written by shard writers.
PER_VIEW_ARRAYS_TOPK = ("topk_idx", "topk_logp", "lse", "gt_logit", "crop", "flip", "bad")
PER_VIEW_ARRAYS_FULL = ("logits", "lse", "gt_logit", "crop", "flip", "bad")
# record_precision "q8" (storage/quantize.py, q8_layout.py): topk_logp as three arrays,
# lse and gt_logit relative to lse(T=1) in float16, crop as uint16; the step array's name
# depends on the schema version.
Q8_TAIL_ARRAYS = ("lse_gap", "gt_logp", "crop", "flip", "bad")
# Arrays indexed [N, ...]: key and label at create time, hw by view 0's shard writers.
PER_SAMPLE_ARRAYS = ("key", "label", "hw")


@dataclass(frozen=True)
class ArraySpec:
    """Shape, chunking and type of one array in the cache group."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any
    fill_value: Any
    dims: tuple[str, ...]
    doc: str


def index_dtype(num_classes: int) -> np.dtype:
    """int16 class indices when C <= 32767, int32 above."""
    return np.dtype(np.int16 if num_classes <= INT16_MAX_CLASSES else np.int32)


def per_view_arrays(manifest: Manifest) -> tuple[str, ...]:
    """Names of the [V, N, ...] arrays of this manifest's format and record precision."""
    if manifest.format == "full":
        return PER_VIEW_ARRAYS_FULL
    if manifest.record_precision == "q8":
        step = q8_layout(manifest.schema_version).step_array
        tail = Q8_TAIL_ARRAYS
        if not stored_temperatures(manifest.temperatures, manifest.schema_version):
            tail = tuple(name for name in tail if name != "lse_gap")  # T = 1 alone: nothing
        return ("topk_idx", "topk_logp1", *([step] if step else []), "topk_code", *tail)
    return PER_VIEW_ARRAYS_TOPK


def array_specs(manifest: Manifest) -> dict[str, ArraySpec]:
    """Every array of a cache made from ``manifest``, by name."""
    v, n, s = manifest.num_views, manifest.num_samples, manifest.shard_size
    k, c, nt = manifest.k, manifest.num_classes, len(manifest.temperatures)
    s = min(s, n)
    nan = float("nan")
    q8 = manifest.record_precision == "q8"
    if q8:
        layout = q8_layout(manifest.schema_version)
        nt = len(stored_temperatures(manifest.temperatures, manifest.schema_version))

    def view(
        name: str, trailing: tuple[int, ...], dtype: Any, fill: Any, dims: tuple[str, ...], doc: str
    ) -> ArraySpec:
        return ArraySpec(
            name, (v, n, *trailing), (1, s, *trailing), dtype, fill, ("view", "sample", *dims), doc
        )

    specs = [
        view(
            "lse_gap" if q8 else "lse",
            (nt,),
            np.float16 if q8 else np.float32,
            nan,
            ("temperature",),
            "teacher logsumexp(z / T) - logsumexp(z) / T for each manifest temperature"
            + (" but 1 (0 there)" if q8 and layout.leaves_out_zeros else "")
            if q8
            else "teacher logsumexp(z / T) for each manifest temperature",
        ),
        view(
            "gt_logp" if q8 else "gt_logit",
            (),
            np.float16 if q8 else np.float32,
            nan,
            (),
            "teacher log-probability of the true class at T=1"
            + (
                " (0 where the label is in the top-K: read its slot)"
                if q8 and layout.leaves_out_zeros
                else ""
            )
            if q8
            else "teacher logit of the true class",
        ),
        view(
            "crop",
            (4,),
            np.uint16 if q8 else np.int32,
            0,
            ("box",),
            "crop box in source pixels: top, left, h, w",
        ),
        view("flip", (), np.uint8, 0, (), "1 when the crop was flipped horizontally"),
        view("bad", (), np.bool_, False, (), "the image could not be decoded; row is filler"),
        ArraySpec("label", (n,), (s,), np.int32, 0, ("sample",), "true class"),
        ArraySpec("key", (n,), (s,), str, "", ("sample",), "sample key (relative path)"),
        ArraySpec(
            "hw", (n, 2), (s, 2), np.int32, 0, ("sample", "hw"), "source image height, width"
        ),
        ArraySpec(
            "done",
            (v, manifest.num_shards),
            (1, 1),
            np.bool_,
            False,
            ("view", "shard"),
            "shard s of view v is completely written",
        ),
    ]
    if q8:
        m = layout.steps_per_octave
        step_doc = f"s = 2**(e / {m}) nats"
        specs[:0] = [
            view("topk_idx", (k,), index_dtype(c), 0, ("rank",), "top-K classes, descending"),
            view("topk_logp1", (), np.float16, nan, (), "top-1 log-probability at T=1"),
            view(
                "topk_code",
                (k,),
                np.uint8,
                0,
                ("rank",),
                "q8 code increments of ranks 2..K in columns 1..K-1 (column 0: "
                + (f"the step exponent e + 128, {step_doc}" if layout.step_array is None
                   else "0")
                + "): logp = topk_logp1 - (s * cumsum(topk_code[..., 1:]))**2",
            ),
        ]  # fmt: skip
        if layout.step_array is not None:
            specs.insert(2, view(layout.step_array, (), np.int8, 0, (), f"e: {step_doc}"))
    elif manifest.format == "topk":
        specs[:0] = [
            view("topk_idx", (k,), index_dtype(c), 0, ("rank",), "top-K classes, descending"),
            view(
                "topk_logp",
                (k,),
                np.float16,
                nan,
                ("rank",),
                "log-probabilities of the top-K at T=1",
            ),
        ]
    else:
        specs[:0] = [view("logits", (c,), np.float16, nan, ("class",), "all teacher logits")]
    if q8 and nt == 0:  # T = 1 alone: no lse_gap array (its chunks would be zero-width)
        specs = [spec for spec in specs if spec.name != "lse_gap"]
    return {spec.name: spec for spec in specs}


def _blosc(cname: str, level: int) -> Callable[[np.dtype], list]:
    def make(dtype: np.dtype) -> list:
        # Bit-shuffle suits small integers (class indices use ~10 of 16 bits);
        # byte-shuffle suits floats (sign and exponent bytes repeat); zstd's entropy coder
        # does better on whole bytes than on bit planes (q8 codes). See README.
        if dtype.kind == "f":
            shuffle = "shuffle"
        elif dtype.itemsize == 1 and dtype.kind in "iu" and cname == "zstd":
            shuffle = "noshuffle"
        else:
            shuffle = "bitshuffle"
        return [
            BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=dtype.itemsize),
            Crc32cCodec(),
        ]

    return make


# Every codec chain ends with crc32c so a damaged chunk is detected on read
# (blosc alone decodes some bit flips into wrong values without error).
COMPRESSORS: dict[str, Callable[[np.dtype], list]] = {
    "blosc-lz4": _blosc("lz4", 5),
    "blosc-zstd": _blosc("zstd", 1),
    "zstd": lambda dtype: [ZstdCodec(level=1), Crc32cCodec()],
    "none": lambda dtype: [Crc32cCodec()],
}
DEFAULT_COMPRESSOR = "blosc-lz4"
# q8 records are small integers and float16 numbers that an entropy coder shrinks further
# (docs/choosing-k-t-precision.md measures both codecs); fp16 keeps lz4's faster decoding.
Q8_DEFAULT_COMPRESSOR = "blosc-zstd"


def default_compressor(manifest: Manifest) -> str:
    """The codec a cache of this manifest gets when none is named."""
    return Q8_DEFAULT_COMPRESSOR if manifest.record_precision == "q8" else DEFAULT_COMPRESSOR


# uint8 arrays that hold one bit per record: coded as bool, so bit-shuffle keeps them at
# about a bit a record under every codec (zstd's whole-byte rule is for q8 codes).
BIT_ARRAYS = ("flip",)


def codecs_for(spec: ArraySpec, compressor: str) -> list:
    """The bytes-to-bytes codec chain of one array for a named compressor."""
    if spec.dtype is str:
        # Variable-length strings are not fixed-size items: shuffling means nothing.
        return [ZstdCodec(level=1), Crc32cCodec()]
    dtype = np.dtype(np.bool_) if spec.name in BIT_ARRAYS else np.dtype(spec.dtype)
    return COMPRESSORS[compressor](dtype)
