"""The cache on a real S3 endpoint (moto's server on loopback, fake keys) through s3fs.

Arrays are compared, read with plain zarr, to the same cache on local disk; endpoint and
keys reach fsspec as `storage_options` (the CLI tests cover the AWS variables).
"""

from __future__ import annotations

import pickle
import uuid

import numpy as np
import pytest
import s3fs  # the [s3] extra is part of `make test`: missing, the tests fail
from storage_testlib import C, K, N, S, keys_for, write_cache, zarr_arrays

import storage
from storage.synthetic import make_labels, make_manifest

pytestmark = pytest.mark.integration  # a real S3 server (moto) on loopback


@pytest.fixture(scope="module")
def s3():
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "k", "secret": "s"}
    boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="us-east-1",
                 aws_access_key_id="k", aws_secret_access_key="s").create_bucket(Bucket="pld-unit")  # fmt: skip
    yield options
    server.stop()


def test_s3_cache_equals_local_and_survives_pickling(s3, tmp_path):
    import zarr

    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=2, shard_size=S)
    labels = make_labels(N, C)
    url = f"s3://pld-unit/{uuid.uuid4().hex}/cache.zarr"
    where = storage.Location(url, s3)
    write_cache(where, m, labels, skip={(1, 3)})
    write_cache(tmp_path / "local.zarr", m, labels, skip={(1, 3)})
    remote = zarr.open_group(url, mode="r", storage_options=s3)
    local = zarr_arrays(tmp_path / "local.zarr")
    assert sorted(name for name, _ in remote.arrays()) == sorted(local)
    for name, array in remote.arrays():
        np.testing.assert_array_equal(np.asarray(array[...]), local[name], err_msg=name)
    reader = pickle.loads(pickle.dumps(storage.open_cache(url, storage_options=s3)))
    assert reader.missing() == [(1, 3)]  # a resumed writer on another worker sees the same
    reader.validate(dataset_keys=keys_for(labels), require_complete=False)
    writer = pickle.loads(pickle.dumps(storage.open_writer(where)))
    assert writer.location == where


def test_deleted_chunk_object_names_array_and_chunk(s3):
    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=2, shard_size=S)
    labels = make_labels(N, C)
    prefix = f"pld-unit/{uuid.uuid4().hex}/cache.zarr"
    write_cache(storage.Location(f"s3://{prefix}", s3), m, labels)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=s3["endpoint_url"],
                           key=s3["key"], secret=s3["secret"])  # fmt: skip
    fs.rm(f"{prefix}/topk_idx/c/1/4/0")
    reader = storage.open_cache(f"s3://{prefix}", storage_options=s3)
    reader.load_view(0)  # other views are intact
    with pytest.raises(storage.CorruptChunkError) as caught:
        reader.load_view(1)
    assert caught.value.array == "topk_idx"
    assert caught.value.chunk == "c/1/4/0"
    assert "view 1 shard 4" in str(caught.value)


def test_unreachable_endpoint_is_a_location_error(s3):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = dict(s3, endpoint_url=f"http://127.0.0.1:{port}",
                config_kwargs={"retries": {"max_attempts": 1}})  # fmt: skip
    with pytest.raises(
        storage.CacheLocationError, match="cannot reach s3://pld-unit/x.*AWS_ENDPOINT_URL"
    ):
        storage.open_cache("s3://pld-unit/x", storage_options=dead)


def test_missing_backend_or_unknown_scheme_is_a_location_error():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(storage.CacheLocationError, match="no fsspec backend for gs://"):
            storage.open_cache("gs://bucket/cache")
    with pytest.raises(storage.CacheLocationError, match="nosuchfs"):
        storage.open_cache("nosuchfs://bucket/cache")
