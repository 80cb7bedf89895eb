"""What ``inspect`` prints: manifest, size, completeness, bad samples and teacher statistics.

Statistics are computed from the written shards only, a bounded range at a time, so a
partial or very large cache can be inspected too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from storage import location
from storage.reader import CacheReader
from storage.schema import array_specs, per_view_arrays
from storage.tail import TailStats, tail_text

# Shards read per step while computing statistics (bounds memory).
SHARDS_PER_STEP = 16
# Bad samples printed by ``inspect``, one line each with its reason (the count covers all).
BAD_KEYS_SHOWN = 20


@dataclass
class CacheSummary:
    """Figures about one cache; ``str()`` of it is what ``inspect`` returns."""

    path: str
    manifest: dict
    num_samples: int
    num_views: int
    k: int
    num_classes: int
    format: str
    num_shards: int
    done_shards: int
    missing: list[tuple[int, int]]
    disk_bytes: int
    view_bytes: int
    uncompressed_view_bytes: int
    records_written: int
    top1: dict[int, float] = field(default_factory=dict)
    tail_mass: dict[int, float] = field(default_factory=dict)
    # view -> T -> mean tail mass at T (every cached temperature); T=1 is `tail_mass`.
    tail_mass_at: dict[int, dict[float, float]] = field(default_factory=dict)
    # T -> {"mean", "p95"} over every written, decodable record of every view.
    tail_overall: dict[float, dict[str, float]] = field(default_factory=dict)
    bad_count: int = 0
    bad_keys: list[str] = field(default_factory=list)
    bad_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def label_mismatch(self) -> bool:
        """True when the pass flagged the labels as probably not in the teacher's order."""
        return bool((self.manifest.get("label_check") or {}).get("flagged"))

    @property
    def bytes_per_record(self) -> float:
        """Stored bytes of the per-view arrays per written (view, sample) record."""
        return self.view_bytes / max(self.records_written, 1)

    @property
    def compression_ratio(self) -> float:
        """Bytes of the written records in their dtypes / stored bytes (per-view arrays)."""
        return self.uncompressed_view_bytes / max(self.view_bytes, 1)

    def __str__(self) -> str:
        m = self.manifest
        t = m["teacher"]
        lines = [
            f"cache      {self.path}",
            f"schema     v{m['schema_version']}  created {m['created_at']}  by {m['producer']!r}",
            f"teacher    {t['name']}  weights {t['weights_source']} (sha256 "
            f"{t['weights_sha256'][:12]}...)  input {t['input_size']} {t['interpolation']}",
            f"views      {m['views']}",
            f"format     {self.format}  K={self.k}  C={self.num_classes}  "
            f"temperatures {m['temperatures']}  records {m.get('record_precision', 'fp16')}",
            f"size       N={self.num_samples}  V={self.num_views}  shards/view={self.num_shards}"
            f" (shard_size {m['shard_size']})",
            f"dataset    fingerprint {m['dataset_fingerprint'][:16]}...",
            f"classes    {class_list_text(m.get('class_list'))}",
            f"labels     {label_check_text(m.get('label_check'))}",
            f"complete   {self.done_shards}/{self.num_views * self.num_shards} (view, shard)"
            + (
                f"; missing {self.missing[:10]}{' ...' if len(self.missing) > 10 else ''}"
                if self.missing
                else ""
            ),
            f"bad        {self.bad_text()}",
            f"disk       {self.disk_bytes / 1e6:.2f} MB total; {self.bytes_per_record:.1f} "
            f"B/record; compression ratio {self.compression_ratio:.2f}",
        ]
        for v in sorted(self.top1):
            tails = self.tail_mass_at.get(v)
            text = (
                ", ".join(f"T={t:g} {mass:.4f}" for t, mass in sorted(tails.items()))
                if tails
                else "n/a (full logits)"
            )
            lines.append(
                f"view {v:<5} teacher top-1 vs label {self.top1[v]:.4f}; mean tail mass {text}"
            )
        if self.tail_overall:
            lines.append(
                f"tail mass  outside the top-{self.k}, all views: {tail_text(self.tail_overall)}"
            )
        lines.append(f"libraries  {json.dumps(m['library_versions'], sort_keys=True)}")
        return "\n".join(lines)

    def bad_text(self) -> str:
        """The samples the pass recorded as undecodable (training skips them): a count, then
        one indented line per key with the reason found when the pass finished."""
        if not self.bad_count:
            return "none recorded (every written sample decoded)"
        lines = [f"{self.bad_count} sample(s) could not be decoded and are skipped by training:"]
        for key in self.bad_keys:
            reason = self.bad_reasons.get(key, "reason not recorded")
            lines.append(f"             {key}: {reason}")
        if self.bad_count > len(self.bad_keys):
            lines.append(
                f"             ... and {self.bad_count - len(self.bad_keys)} more (group "
                "attribute bad_samples)"
            )
        return "\n".join(lines)


def class_list_text(class_list: dict | None) -> str:
    """One line on the class list that made the labels (manifest ``class_list``)."""
    if class_list is None:
        return "not recorded (cache written before class lists; its label array decides)"
    source = "given list" if class_list["source"] == "list" else "sorted folder names"
    return f"{source} of {class_list['num_classes']} (sha256 {class_list['sha256'][:12]}...)"


def label_check_text(check: dict | None) -> str:
    """One line on the pass's label agreement (manifest ``label_check``), flag first."""
    if check is None:
        return "not checked (cache written before label checks, or not finished)"
    figures = (
        f"teacher top-1 vs label {check['top1']:.4f} over {check['records']} records, "
        f"required {check['min_agreement']:.4f}"
    )
    if check["flagged"]:
        return (
            f"FLAGGED: LABEL MISMATCH: {figures}. The labels probably do not follow the "
            "teacher's class order: re-create the cache with `classes` (the teacher's class "
            "list); students refuse it unless allow_label_mismatch=true"
        )
    return f"ok: {figures}"


def _done_ranges(reader: CacheReader, view: int, missing: set) -> list[tuple[int, int]]:
    # Runs of consecutive written shards, at most SHARDS_PER_STEP each.
    ranges, s, size = [], 0, reader.shard_size
    while s < reader.num_shards:
        if (view, s) in missing:
            s += 1
            continue
        first = s
        while s < reader.num_shards and (view, s) not in missing and s - first < SHARDS_PER_STEP:
            s += 1
        ranges.append((first * size, min(s * size, reader.num_samples)))
    return ranges


def summarize(path: location.PathOrLocation, storage_options: dict | None = None) -> CacheSummary:
    """Compute a ``CacheSummary`` of the cache at ``path`` (a path, URL or ``Location``).

    Raises:
        NotACacheError, SchemaVersionError, CorruptChunkError: see ``open_cache``.
    """
    with CacheReader(path, storage_options) as reader:
        return summary_of(reader)


def summary_of(reader: CacheReader) -> CacheSummary:
    """``summarize`` for a cache already open (left open), so a caller that reads it anyway
    (the pass's finishing step) opens it once.

    Raises:
        CorruptChunkError: see ``open_cache``.
    """
    missing = reader.missing()
    missing_set = set(missing)
    specs = array_specs(reader.manifest)
    view_bytes = record_bytes = 0
    for name in per_view_arrays(reader.manifest):
        view_bytes += reader._arrays[name].nbytes_stored()
        spec = specs[name]
        record_bytes += int(np.prod(spec.shape[2:], dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    written = sum(
        min((s + 1) * reader.shard_size, reader.num_samples) - s * reader.shard_size
        for v in range(reader.num_views)
        for s in range(reader.num_shards)
        if (v, s) not in missing_set
    )
    summary = CacheSummary(
        path=reader.path,
        manifest=reader.manifest.to_dict(),
        num_samples=reader.num_samples,
        num_views=reader.num_views,
        k=reader.k,
        num_classes=reader.num_classes,
        format=reader.format,
        num_shards=reader.num_shards,
        done_shards=reader.num_views * reader.num_shards - len(missing),
        missing=missing,
        disk_bytes=location.disk_bytes(reader.location),
        view_bytes=view_bytes,
        uncompressed_view_bytes=written * record_bytes,
        records_written=written,
    )
    bad = np.zeros(reader.num_samples, dtype=bool)  # bad in any written view
    temps = reader.temperatures
    overall = TailStats(temps)
    for view in range(reader.num_views):
        hits = count = 0
        tail = np.zeros(len(temps))
        for start, stop in _done_ranges(reader, view, missing_set):
            slab = reader.load_view(view, start, stop)
            bad[start:stop] |= slab.bad
            good = ~slab.bad
            top = slab.topk_idx[:, 0] if slab.logits is None else np.argmax(slab.logits, axis=1)
            hits += int((top[good] == slab.label[good]).sum())
            count += int(good.sum())
            if slab.topk_logp is not None:
                masses = overall.add(slab.topk_logp[good], slab.lse[good])
                tail += [float(m.sum()) for m in masses]
        if count:
            summary.top1[view] = hits / count
            if reader.format == "topk":
                summary.tail_mass_at[view] = {t: float(m / count) for t, m in zip(temps, tail)}
                summary.tail_mass[view] = summary.tail_mass_at[view][1.0]
    summary.tail_overall = overall.summary()
    bad_index = np.flatnonzero(bad)
    summary.bad_count = len(bad_index)
    summary.bad_keys = [str(reader.keys[i]) for i in bad_index[:BAD_KEYS_SHOWN]]
    summary.bad_reasons = reader.bad_reasons()
    return summary


def inspect(path: location.PathOrLocation, storage_options: dict | None = None) -> str:
    """A human summary of a cache: manifest, N, V, K, C, completeness, bad samples (count and
    first keys), bytes, statistics.

    Raises:
        NotACacheError, SchemaVersionError, CorruptChunkError: see ``open_cache``.
    """
    return str(summarize(path, storage_options))
