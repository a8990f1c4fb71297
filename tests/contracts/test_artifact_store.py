"""The ArtifactStore contract (tools/artifacts/base.py), run against the local store and the S3 store.

S3 runs against moto's S3-protocol server on 127.0.0.1 (a real HTTP peer), through boto3.
"""

from __future__ import annotations

import hashlib
import pickle
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tools.artifacts.base import ArtifactStore
from tools.artifacts.local import LocalArtifactStore
from tools.artifacts.s3 import S3ArtifactStore
from tools.errors import ArtifactNotFound, ArtifactTooLarge, IntegrityError

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_s3_store(endpoint: str, **overrides: object) -> S3ArtifactStore:
    bucket = f"lp-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **CREDS).create_bucket(Bucket=bucket)
    options: dict[str, object] = {"endpoint_url": endpoint, "region": "us-east-1", "path_style": True, **CREDS}
    options.update(overrides)
    return S3ArtifactStore(bucket, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return make_s3_store(request.getfixturevalue("moto_endpoint"), prefix="artifacts")


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:  # file:// for local, http:// for S3
        data: bytes = answer.read()
    return data


def _upload(url: str, data: bytes) -> None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        target = Path(unquote(parts.path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return
    # An explicit type: urllib defaults to a form type, whose body the server would parse as a form.
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_put_then_get_round_trips_with_sha256(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"adapter weights " * 1000
    ref = store.put("runs/r1/adapter/adapter_model.safetensors", _file(tmp_path, "a.safetensors", data))
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.size == len(data) and ref.key == "runs/r1/adapter/adapter_model.safetensors"
    assert store.exists(ref.key) and not store.exists("runs/r1/missing.json")
    out = store.get(ref.key, tmp_path / "out" / "adapter.safetensors", sha256=ref.sha256)
    assert out.read_bytes() == data
    store.put("runs/r1/metrics.json", _file(tmp_path, "m.json", b"{}"))
    store.put("runs/r2/metrics.json", _file(tmp_path, "m2.json", b"{}"))
    assert store.list("runs/r1/") == ["runs/r1/adapter/adapter_model.safetensors", "runs/r1/metrics.json"]


def test_sha256_mismatch_raises_and_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("runs/r1/metrics.json", _file(tmp_path, "m.json", b'{"loss": 1.0}'))
    dest = tmp_path / "out" / "metrics.json"
    with pytest.raises(IntegrityError):
        store.get("runs/r1/metrics.json", dest, sha256="0" * 64)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_an_artifact_over_the_callers_limit_is_refused_before_download(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("runs/r1/heartbeat.json", _file(tmp_path, "hb.json", b"x" * 5000))
    dest = tmp_path / "out" / "heartbeat.json"
    with pytest.raises(ArtifactTooLarge, match="5000 bytes"):
        store.get("runs/r1/heartbeat.json", dest, max_bytes=4096)
    assert not dest.exists()
    assert store.get("runs/r1/heartbeat.json", dest, max_bytes=5000).read_bytes() == b"x" * 5000


def test_missing_key_is_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        store.get("runs/none/adapter.safetensors", tmp_path / "x.safetensors")


@pytest.mark.parametrize("key", ["../escape.json", "/abs/key.json", "runs/../../x.json", "a\\b.json", ""])
def test_path_traversal_is_refused(store: ArtifactStore, tmp_path: Path, key: str) -> None:
    src = _file(tmp_path, "x.json", b"{}")
    with pytest.raises(IntegrityError):
        store.put(key, src)
    with pytest.raises(IntegrityError):
        store.get(key, tmp_path / "dest.json")


def test_pickled_weights_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        store.put("runs/r1/adapter/adapter_model.bin", _file(tmp_path, "w.bin", b"weights"))
    pickled = _file(tmp_path, "sneaky.safetensors", pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(IntegrityError):
        store.put("runs/r1/adapter/adapter_model.safetensors", pickled)
    assert store.list("runs/r1/") == []


def test_presigned_urls_read_and_write(store: ArtifactStore, tmp_path: Path) -> None:
    ref = store.put("runs/r1/data/train.jsonl", _file(tmp_path, "train.jsonl", b'{"a": 1}\n'))
    assert _fetch(store.presign_get(ref.key, expires_s=60)) == b'{"a": 1}\n'
    _upload(store.presign_put("runs/r1/out/metrics.json", expires_s=60), b'{"loss": 0.5}')
    got = store.get(
        "runs/r1/out/metrics.json", tmp_path / "m.json", sha256=hashlib.sha256(b'{"loss": 0.5}').hexdigest()
    )
    assert got.read_bytes() == b'{"loss": 0.5}'
