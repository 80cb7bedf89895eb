"""Manifest dataclasses: validation, JSON round trip, compatibility, dataset fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

import storage
from storage import InvalidManifestError, Manifest, SchemaVersionError, TeacherInfo, ViewInfo
from storage.synthetic import make_manifest


def test_json_round_trip_is_identical():
    m = make_manifest(producer="flow-run/abc", library_versions={"torch": "2.4"})
    back = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    assert back.temperatures == (1.0, 4.0)
    assert isinstance(back.teacher.mean, tuple)


def test_to_dict_holds_every_field_the_issue_lists():
    d = make_manifest().to_dict()
    assert set(d["teacher"]) == {
        "name",
        "weights_source",
        "weights_sha256",
        "num_classes",
        "input_size",
        "mean",
        "std",
        "interpolation",
    }
    assert set(d["views"]) == {"mode", "num_views", "seed", "scale", "ratio", "crop_pct"}
    for key in (
        "schema_version",
        "format",
        "k",
        "temperatures",
        "dataset_fingerprint",
        "library_versions",
        "created_at",
        "producer",
        "num_samples",
        "shard_size",
    ):
        assert key in d


def test_compatible_ignores_provenance_fields_only():
    m = make_manifest()
    same = dataclasses.replace(m, producer="other", created_at="2020", library_versions={"a": 1})
    assert m.compatible_with(same)
    assert m.diff(same) == []
    other = dataclasses.replace(m, teacher=dataclasses.replace(m.teacher, name="resnet50"))
    assert not m.compatible_with(other)
    assert m.diff(other) == ["teacher.name: 'synthetic' != 'resnet50'"]
    hotter = dataclasses.replace(m, temperatures=(1.0, 2.0))
    assert m.diff(hotter) == ["temperatures: [1.0, 4.0] != [1.0, 2.0]"]


def test_full_format_normalises_k_to_num_classes():
    assert make_manifest(fmt="full", k=0, num_classes=10).k == 10
    assert make_manifest(fmt="full", k=10, num_classes=10).k == 10


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"k": 11}, "k must be in [1, num_classes=10]"),
        ({"k": 0}, "k must be in [1, num_classes=10]"),
        ({"fmt": "full", "k": 5}, "format 'full' stores all 10 classes"),
        ({"fmt": "dense"}, "format must be one of"),
        ({"temperatures": ()}, "temperatures must be a non-empty"),
        ({"temperatures": (1.0, -2.0)}, "distinct positive"),
        ({"temperatures": (1.0, 1.0)}, "distinct positive"),
        ({"temperatures": (2.0, 4.0)}, "must include 1.0 for format 'topk'"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"shard_size": 0}, "shard_size must be >= 1"),
    ],
)
def test_impossible_manifests_are_refused(overrides, fragment):
    with pytest.raises(InvalidManifestError, match=fragment.replace("[", r"\[")):
        make_manifest(**overrides)


def test_view_and_teacher_checks():
    with pytest.raises(InvalidManifestError, match="exactly one view"):
        ViewInfo(mode="eval", num_views=2, seed=0)
    with pytest.raises(InvalidManifestError, match="views.mode"):
        ViewInfo(mode="train", num_views=2, seed=0)
    with pytest.raises(InvalidManifestError, match="scale"):
        ViewInfo(mode="replay", num_views=2, seed=0, scale=(0.5, 0.1))
    with pytest.raises(InvalidManifestError, match="std must be > 0"):
        TeacherInfo("t", "none", "", 10, 32, (0, 0, 0), (1, 0, 1), "bilinear")
    with pytest.raises(InvalidManifestError, match="3 numbers"):
        TeacherInfo("t", "none", "", 10, 32, (0, 0), (1, 1, 1), "bilinear")


def test_unknown_schema_version_is_its_own_error():
    d = make_manifest().to_dict()
    d["schema_version"] = storage.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match="not supported"):
        Manifest.from_dict(d)


def test_malformed_dict_is_refused():
    d = make_manifest().to_dict()
    del d["teacher"]["name"]
    with pytest.raises(InvalidManifestError, match="malformed"):
        Manifest.from_dict(d)
    d = make_manifest().to_dict()
    d["colour"] = "blue"
    with pytest.raises(InvalidManifestError, match="malformed"):
        Manifest.from_dict(d)


def test_fingerprint_matches_hand_computed_sha256():
    keys, sizes = ["b/2.png", "a/1.png"], [20, 10]
    expected = hashlib.sha256(b"a/1.png\t10\nb/2.png\t20\n").hexdigest()
    assert storage.fingerprint(keys, sizes) == expected
    assert storage.fingerprint(keys[::-1], sizes[::-1]) == expected
    assert storage.fingerprint(keys, [20, 11]) != expected
    with pytest.raises(InvalidManifestError, match="one size per key"):
        storage.fingerprint(keys, [1])
