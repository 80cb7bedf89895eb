"""The manifest's label records: `class_list` (hash of the list that made the labels) and
`label_check` (the pass's agreement, flagged or not): JSON, identity, writing, inspect."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import zarr

import storage
from storage import ClassList, InvalidManifestError, LabelCheck, Manifest
from storage.synthetic import make_manifest

NAMES = ["n01440764", "n01443537", "n01484077"]
SHA = hashlib.sha256("".join(f"{n}\n" for n in NAMES).encode()).hexdigest()


def test_class_list_hash_is_the_lines_in_order():
    assert storage.class_list_sha256(NAMES) == SHA
    assert storage.class_list_sha256(NAMES[::-1]) != SHA
    with pytest.raises(InvalidManifestError, match="empty or holds a newline"):
        storage.class_list_sha256(["a", "b\nc"])


def test_label_records_round_trip_and_unset_ones_are_left_out():
    plain = make_manifest()
    assert "class_list" not in plain.to_dict()
    assert "label_check" not in plain.to_dict()
    m = dataclasses.replace(
        plain,
        class_list=ClassList(SHA, 3, "list"),
        label_check=LabelCheck(top1=0.0, min_agreement=0.5, records=40),
    )
    data = json.loads(json.dumps(m.to_dict()))
    assert data["class_list"] == {"sha256": SHA, "num_classes": 3, "source": "list"}
    assert data["label_check"] == {
        "top1": 0.0,
        "min_agreement": 0.5,
        "records": 40,
        "flagged": True,
    }
    back = Manifest.from_dict(data)
    assert back == m
    assert back.label_mismatch
    assert not plain.label_mismatch


def test_identity_compares_the_class_list_but_not_the_check_or_its_source():
    m = dataclasses.replace(make_manifest(), class_list=ClassList(SHA, 3, "list"))
    opted = dataclasses.replace(m, class_list=ClassList(SHA, 3, "sorted-folders"))
    checked = dataclasses.replace(m, label_check=LabelCheck(0.9, 0.5, 10))
    assert m.diff(opted) == []
    assert m.diff(checked) == []
    other = dataclasses.replace(m, class_list=ClassList("a" * 64, 3, "list"))
    assert m.diff(other) == [f"class_list.sha256: {SHA!r} != {'a' * 64!r}"]
    # A manifest without a class list (a cache written before them) is not compared on it.
    assert m.diff(make_manifest()) == []
    assert make_manifest().diff(m) == []


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: ClassList("abc", 3), "64 hex characters"),
        (lambda: ClassList(SHA, 0), "num_classes must be >= 1"),
        (lambda: ClassList(SHA, 3, "alphabetical"), "source must be one of"),
        (lambda: LabelCheck(1.5, 0.5, 3), "must be in \\[0, 1\\]"),
        (lambda: LabelCheck(0.9, 0.5, 3, flagged=True), "contradicts"),
        (
            lambda: dataclasses.replace(make_manifest(), class_list=ClassList(SHA, 11)),
            "names 11 classes but the teacher has 10",
        ),
        (
            lambda: dataclasses.replace(make_manifest(), label_check={"top1": 1}),
            "must be a LabelCheck",
        ),
    ],
)
def test_bad_label_records_are_refused(make, fragment):
    with pytest.raises(InvalidManifestError, match=fragment):
        make()


def test_recording_a_label_check_keeps_everything_else(cache_copy):
    before = zarr.open_group(str(cache_copy), mode="r").attrs.asdict()
    writer = storage.open_writer(str(cache_copy))
    writer.record_bad_samples(["a/b.jpg"])
    storage.open_writer(str(cache_copy)).record_label_check(LabelCheck(0.01, 0.5, 186))
    after = zarr.open_group(str(cache_copy), mode="r").attrs.asdict()
    assert after["bad_samples"] == ["a/b.jpg"]
    assert after["schema_version"] == before["schema_version"]
    manifest = dict(after["pld_cache"])
    assert manifest.pop("label_check") == {
        "top1": 0.01, "min_agreement": 0.5, "records": 186, "flagged": True,
    }  # fmt: skip
    assert manifest == before["pld_cache"]
    reader = storage.open_cache(str(cache_copy))
    assert reader.manifest.label_mismatch
    # Still compatible with the manifest it was created from (resume, students).
    storage.open_writer(str(cache_copy), storage.Manifest.from_dict(before["pld_cache"]))
    text = storage.inspect(str(cache_copy))
    assert "labels     FLAGGED: LABEL MISMATCH: teacher top-1 vs label 0.0100 over 186" in text
    assert "classes    not recorded" in text
    with pytest.raises(TypeError, match="storage.LabelCheck"):
        writer.record_label_check({"top1": 0.5})
