"""The cache manifest: what made a cache, as dataclasses that round-trip through JSON.

The manifest lives in the group attributes under ``"pld_cache"``. Its identity fields
(everything but ``library_versions``, ``created_at``, ``producer``, ``label_check`` and
``class_list.source``) decide whether a cache can be reused or resumed;
``compatible_with`` and ``diff`` compare them.

``class_list`` and ``label_check`` came after the first caches were written. When unset
they are left out of the JSON, so a cache written before them reads, hashes and compares
exactly as it did; a cache without ``class_list`` is compatible with any class list (its
``label`` array, compared on resume and by students, is then what decides).

Schema version 2 added ``record_precision`` (``fp16``, or ``q8``: 8-bit top-K log-probs,
see quantize.py). A version-1 cache has no such field and holds fp16 records, laid out
exactly as a version-2 fp16 cache; its manifest keeps its version-1 JSON (so its hash,
which student runs record, is unchanged), and it is compatible with a version-2 fp16
manifest (the version says how the manifest is written, not what the cache holds).
Schema version 3 changed only how q8 records are laid out (storage/q8_layout.py); fp16
and full caches are the same in versions 2 and 3, and a resumed cache keeps its version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.errors import InvalidManifestError, SchemaVersionError
from storage.labels import ClassList, LabelCheck

SCHEMA_VERSION: int = 3
# Versions this code reads: 1 (fp16 records only, no record_precision field), 2 (the first
# q8 layout) and 3 (q8 without the arrays' always-zero parts, storage/q8_layout.py).
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3)
FORMATS = ("topk", "full")
RECORD_PRECISIONS = ("fp16", "q8")
VIEW_MODES = ("eval", "replay")
# Fields that describe how and when a cache was made, or a finding about it, not what it
# holds (a dotted name excludes one leaf, a plain name the whole field).
NON_IDENTITY_FIELDS = (
    "library_versions", "created_at", "producer", "label_check", "class_list.source",
    "schema_version",
)  # fmt: skip
# Fields added after the first caches: absent from the JSON when None (see the docstring).
OPTIONAL_FIELDS = ("class_list", "label_check")


def _set(obj: Any, name: str, value: Any) -> None:
    # Frozen dataclasses normalise their inputs (lists -> tuples) in __post_init__.
    object.__setattr__(obj, name, value)


def _float_tuple(obj: Any, name: str, length: int | None) -> None:
    value = getattr(obj, name)
    try:
        items = tuple(float(x) for x in value)
    except (TypeError, ValueError) as exc:
        raise InvalidManifestError(
            f"{type(obj).__name__}.{name} must be a sequence of numbers, got {value!r}"
        ) from exc
    if length is not None and len(items) != length:
        raise InvalidManifestError(
            f"{type(obj).__name__}.{name} must have {length} numbers, got {value!r}"
        )
    if not all(math.isfinite(x) for x in items):
        raise InvalidManifestError(f"{type(obj).__name__}.{name} must be finite, got {value!r}")
    _set(obj, name, items)


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher whose outputs are cached, and the input pipeline it expects."""

    name: str
    weights_source: str
    weights_sha256: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def __post_init__(self) -> None:
        if int(self.num_classes) < 1:
            raise InvalidManifestError(
                f"teacher.num_classes must be >= 1, got {self.num_classes!r}"
            )
        if int(self.input_size) < 1:
            raise InvalidManifestError(f"teacher.input_size must be >= 1, got {self.input_size!r}")
        _set(self, "num_classes", int(self.num_classes))
        _set(self, "input_size", int(self.input_size))
        _float_tuple(self, "mean", 3)
        _float_tuple(self, "std", 3)
        if min(self.std) <= 0:
            raise InvalidManifestError(f"teacher.std must be > 0, got {self.std!r}")


@dataclass(frozen=True)
class ViewInfo:
    """How the views were drawn: ``eval`` (one centred crop) or ``replay`` (V random crops)."""

    mode: str
    num_views: int
    seed: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if self.mode not in VIEW_MODES:
            raise InvalidManifestError(f"views.mode must be one of {VIEW_MODES}, got {self.mode!r}")
        if int(self.num_views) < 1:
            raise InvalidManifestError(f"views.num_views must be >= 1, got {self.num_views!r}")
        if self.mode == "eval" and int(self.num_views) != 1:
            raise InvalidManifestError(
                f"views.mode 'eval' has exactly one view, got num_views={self.num_views}; "
                "use mode 'replay' for several views"
            )
        _set(self, "num_views", int(self.num_views))
        _set(self, "seed", int(self.seed))
        _float_tuple(self, "scale", 2)
        _float_tuple(self, "ratio", 2)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise InvalidManifestError(
                f"views.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}"
            )
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InvalidManifestError(f"views.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 < float(self.crop_pct) <= 1:
            raise InvalidManifestError(f"views.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        _set(self, "crop_pct", float(self.crop_pct))


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to decide whether a cache is valid for it.

    ``k`` is the number of cached classes per record; for ``format="full"`` it is
    normalised to ``teacher.num_classes`` (0 is accepted as "all").
    """

    teacher: TeacherInfo
    views: ViewInfo
    format: str
    k: int
    temperatures: tuple[float, ...]
    dataset_fingerprint: str
    num_samples: int
    shard_size: int
    schema_version: int = SCHEMA_VERSION
    record_precision: str = "fp16"
    library_versions: dict = field(default_factory=dict)
    created_at: str = ""
    producer: str = ""
    class_list: ClassList | None = None
    label_check: LabelCheck | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, TeacherInfo) or not isinstance(self.views, ViewInfo):
            raise InvalidManifestError(
                "Manifest.teacher must be a TeacherInfo and Manifest.views a ViewInfo, got "
                f"{type(self.teacher).__name__} and {type(self.views).__name__}"
            )
        if self.schema_version not in READABLE_SCHEMA_VERSIONS:
            raise SchemaVersionError(
                f"manifest schema_version {self.schema_version!r} is not supported by this "
                f"code (it reads versions {READABLE_SCHEMA_VERSIONS}); use the matching "
                "pld-pipeline version"
            )
        if self.format not in FORMATS:
            raise InvalidManifestError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.record_precision not in RECORD_PRECISIONS:
            raise InvalidManifestError(
                f"record_precision must be one of {RECORD_PRECISIONS}, got "
                f"{self.record_precision!r}"
            )
        if self.record_precision != "fp16" and (self.format != "topk" or self.schema_version < 2):
            raise InvalidManifestError(
                f"record_precision {self.record_precision!r} needs format 'topk' and schema "
                f"version 2 or later, got format {self.format!r} and version {self.schema_version}; "
                "full logits are stored in fp16"
            )
        num_classes = self.teacher.num_classes
        k = int(self.k)
        if self.format == "full":
            if k not in (0, num_classes):
                raise InvalidManifestError(
                    f"format 'full' stores all {num_classes} classes, got k={k}; "
                    f"pass k={num_classes} (or 0)"
                )
            k = num_classes
        elif not 1 <= k <= num_classes:
            raise InvalidManifestError(
                f"k must be in [1, num_classes={num_classes}] for format 'topk', got k={k}; "
                "lower k or use format 'full'"
            )
        _set(self, "k", k)
        _float_tuple(self, "temperatures", None)
        temps = self.temperatures
        if not temps or min(temps) <= 0 or len(set(temps)) != len(temps):
            raise InvalidManifestError(
                f"temperatures must be a non-empty list of distinct positive numbers, got {temps!r}"
            )
        if self.format == "topk" and 1.0 not in temps:
            # Raw top-K logits are topk_logp + lse(T=1): without it no other
            # temperature can be derived from the cache.
            raise InvalidManifestError(
                f"temperatures must include 1.0 for format 'topk', got {temps!r}; "
                "add 1.0 (the other temperatures are derived from it)"
            )
        if int(self.num_samples) < 1:
            raise InvalidManifestError(f"num_samples must be >= 1, got {self.num_samples!r}")
        if int(self.shard_size) < 1:
            raise InvalidManifestError(f"shard_size must be >= 1, got {self.shard_size!r}")
        if not isinstance(self.dataset_fingerprint, str):
            raise InvalidManifestError(
                f"dataset_fingerprint must be a str, got {self.dataset_fingerprint!r}"
            )
        _set(self, "num_samples", int(self.num_samples))
        _set(self, "shard_size", int(self.shard_size))
        _set(self, "schema_version", int(self.schema_version))
        _set(self, "library_versions", dict(self.library_versions))
        for name, kind in (("class_list", ClassList), ("label_check", LabelCheck)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise InvalidManifestError(
                    f"Manifest.{name} must be a {kind.__name__} or None, got {type(value).__name__}"
                )
        if self.class_list is not None and self.class_list.num_classes > num_classes:
            raise InvalidManifestError(
                f"class_list names {self.class_list.num_classes} classes but the teacher has "
                f"{num_classes}; labels must be teacher class indices"
            )

    @property
    def num_classes(self) -> int:
        """C, the teacher's number of classes."""
        return self.teacher.num_classes

    @property
    def num_views(self) -> int:
        """V, the number of cached views per sample."""
        return self.views.num_views

    @property
    def num_shards(self) -> int:
        """S, the number of write shards per view: ceil(N / shard_size)."""
        return -(-self.num_samples // self.shard_size)

    @property
    def label_mismatch(self) -> bool:
        """True when the pass flagged its labels as probably not in the teacher's order."""
        return self.label_check is not None and bool(self.label_check.flagged)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as plain JSON types (tuples become lists); unset optional
        fields are left out, so older caches keep their exact JSON."""
        data = jsonable(dataclasses.asdict(self))
        for name in OPTIONAL_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        if self.schema_version == 1:  # version 1 had no such field: its JSON stays as written
            data.pop("record_precision")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build a manifest from ``to_dict`` output.

        Raises:
            SchemaVersionError: ``schema_version`` is not one of ``READABLE_SCHEMA_VERSIONS``.
            InvalidManifestError: a field is missing, unknown or holds an impossible value.
        """
        if not isinstance(data, dict):
            raise InvalidManifestError(f"a manifest must be a dict, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version not in READABLE_SCHEMA_VERSIONS:
            raise SchemaVersionError(
                f"manifest schema_version {version!r} is not supported by this code "
                f"(it reads versions {READABLE_SCHEMA_VERSIONS}); use the matching "
                "pld-pipeline version"
            )
        if version == 1 and "record_precision" in data:
            raise InvalidManifestError(
                "a schema version 1 manifest has no record_precision field; the cache's "
                "attributes were edited by hand or by a newer writer"
            )
        try:
            fields = dict(data)
            fields["teacher"] = TeacherInfo(**data["teacher"])
            fields["views"] = ViewInfo(**data["views"])
            for name, kind in (("class_list", ClassList), ("label_check", LabelCheck)):
                if fields.get(name) is not None:
                    fields[name] = kind(**fields[name])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise InvalidManifestError(f"manifest dict is malformed: {exc}") from exc

    def identity(self) -> dict[str, Any]:
        """Return the flattened identity fields, e.g. ``{"teacher.name": "resnet50", ...}``."""
        flat = flatten(self.to_dict())
        flat["record_precision"] = self.record_precision  # implied "fp16" in version 1
        return {
            key: value
            for key, value in flat.items()
            if key not in NON_IDENTITY_FIELDS and key.split(".")[0] not in NON_IDENTITY_FIELDS
        }

    def compatible_with(self, other: Manifest) -> bool:
        """True when both manifests describe the same cache contents."""
        return not self.diff(other)

    def diff(self, other: Manifest) -> list[str]:
        """List the identity fields that differ, as ``"field: self_value != other_value"``.

        An optional field unset on either side (a cache written before it) is not compared.
        """
        mine, theirs = self.identity(), other.identity()
        unset = {
            n for n in OPTIONAL_FIELDS if getattr(self, n) is None or getattr(other, n) is None
        }
        return [
            f"{key}: {mine.get(key)!r} != {theirs.get(key)!r}"
            for key in sorted(set(mine) | set(theirs))
            if mine.get(key) != theirs.get(key) and key.split(".")[0] not in unset
        ]


def jsonable(value: Any) -> Any:
    """Convert tuples to lists (recursively) so values compare equal to their JSON form."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys: ``{"teacher": {"name": x}}`` -> ``{"teacher.name": x}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def manifest_hash(manifest: Manifest) -> str:
    """The id of a cache's contents: sha256 hex of the manifest's JSON with sorted keys,
    without ``label_check``.

    Student runs record it, so a run resumes or counts as finished only on the cache it
    started from; events and reports name caches by it. The label check is a finding about
    the cache that a rerun of the pass may rewrite (e.g. with another threshold), not its
    contents; leaving it out also keeps the hash of a cache written before label checks
    what it was, so runs on it still resume.
    """
    data = manifest.to_dict()
    data.pop("label_check", None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(keys: Sequence[str], sizes: Sequence[int]) -> str:
    """Hash a dataset listing: sha256 hex of the sorted ``"key\\tsize\\n"`` lines.

    Args:
        keys: sample keys [N] (relative posix paths), in any order.
        sizes: file sizes in bytes [N], aligned with ``keys``.

    Returns:
        64 hex characters; equal for equal (key, size) sets whatever their order.

    Raises:
        InvalidManifestError: lengths differ, or a key holds a tab or newline.
    """
    keys, sizes = list(map(str, keys)), list(map(int, sizes))
    if len(keys) != len(sizes):
        raise InvalidManifestError(
            f"fingerprint needs one size per key, got {len(keys)} keys and {len(sizes)} sizes"
        )
    # A listing comes sorted (strictly): then it is hashed as it is (sorting pairs of
    # 1.28 M keys was most of the cost), and as one string hashed once.
    if any(map(operator.ge, keys, keys[1:])):
        keys, sizes = map(list, zip(*sorted(zip(keys, sizes)), strict=True)) if keys else ([], [])
    text = "".join(map("{}\t{}\n".format, keys, sizes))
    if text.count("\t") != len(keys) or text.count("\n") != len(keys):
        key = next(k for k in keys if "\t" in k or "\n" in k)
        raise InvalidManifestError(f"sample key {key!r} holds a tab or newline")
    return hashlib.sha256(text.encode()).hexdigest()
