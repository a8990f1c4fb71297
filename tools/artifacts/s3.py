"""The S3 artifact store (AWS S3 or any S3-compatible server through ``endpoint_url``), on boto3.

Invariants:

- Every object is written with its sha256 as object metadata (``x-amz-meta-sha256``); ``get`` downloads to a
  temporary name beside the destination, verifies the bytes against that metadata and against the caller's
  ``sha256``, and only then renames into place. On a mismatch nothing is left at the destination.
- Keys are checked (``check_key``: no absolute paths, no ``..``) and pickled weight files are refused on the way in
  and on the way out (``refuse_pickled``).
- Big files go multipart (``TransferConfig``); presigned GET/PUT URLs are short-lived (at most ``max_presign_s``).
- botocore errors are translated here: a missing key -> ``ArtifactNotFound``; everything else -> ``ArtifactError``.
- Credentials come from the standard boto3 chain unless given explicitly; they never go into a URL except as a
  presigned signature.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tools.artifacts.base import ArtifactRef, ArtifactStore, check_key, refuse_pickled, sha256_file
from tools.errors import ArtifactError, ArtifactNotFound, ArtifactTooLarge, IntegrityError

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        multipart_threshold_mb: int = 64,
        multipart_chunk_mb: int = 16,
        max_concurrency: int = 4,
        max_presign_s: int = 3600,
        path_style: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        self.max_presign_s = max_presign_s
        session = boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            region_name=region,
        )
        config = Config(
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            signature_version="s3v4",
        )
        self._s3: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold_mb * _MIB,
            multipart_chunksize=multipart_chunk_mb * _MIB,
            max_concurrency=max_concurrency,
        )

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    # -- the interface --------------------------------------------------------------------------------------
    def put(self, key: str, source: Path) -> ArtifactRef:
        object_key = self._object_key(key)
        refuse_pickled(key, source)
        digest = sha256_file(source)
        size = source.stat().st_size
        with _translated(f"put {key}"):
            self._s3.upload_file(
                str(source),
                self.bucket,
                object_key,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=self._transfer,
            )
        logger.info("Stored artifact %s (%d bytes, sha256 %s)", self.uri(key), size, digest)
        return ArtifactRef(key=check_key(key), uri=self.uri(key), sha256=digest, size=size)

    def get(self, key: str, dest: Path, *, sha256: str | None = None, max_bytes: int | None = None) -> Path:
        object_key = self._object_key(key)
        refuse_pickled(key)
        with _translated(f"get {key}", key=key):
            head = self._s3.head_object(Bucket=self.bucket, Key=object_key)
        if max_bytes is not None and int(head.get("ContentLength") or 0) > max_bytes:
            raise ArtifactTooLarge(
                f"artifact {key!r} has {head.get('ContentLength')} bytes, over the {max_bytes} accepted"
            )
        recorded = (head.get("Metadata") or {}).get("sha256")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            with _translated(f"get {key}", key=key):
                self._s3.download_file(self.bucket, object_key, str(tmp), Config=self._transfer)
            if max_bytes is not None and (size := tmp.stat().st_size) > max_bytes:  # replaced after the HEAD
                raise ArtifactTooLarge(f"artifact {key!r} has {size} bytes, over the {max_bytes} accepted")
            actual = sha256_file(tmp)
            for expected, source in ((sha256, "the caller"), (recorded, "the store's metadata")):
                if expected is not None and actual != expected:
                    raise IntegrityError(f"artifact {key!r} has sha256 {actual}, {source} expected {expected}")
            refuse_pickled(key, tmp)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def exists(self, key: str) -> bool:
        try:
            with _translated(f"exists {key}", key=key):
                self._s3.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ArtifactNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _translated(f"list {prefix}"):
            paginator = self._s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(obj["Key"].removeprefix(self.prefix) for obj in page.get("Contents") or [])
        return sorted(keys)

    def presign_get(self, key: str, *, expires_s: int = 900) -> str:
        return self._presign("get_object", key, expires_s)

    def presign_put(self, key: str, *, expires_s: int = 900) -> str:
        refuse_pickled(key)
        return self._presign("put_object", key, expires_s)

    def delete(self, key: str) -> None:
        with _translated(f"delete {key}"):
            self._s3.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def _presign(self, method: str, key: str, expires_s: int) -> str:
        if not 0 < expires_s <= self.max_presign_s:
            raise ValueError(f"presigned URLs live 1..{self.max_presign_s} s, not {expires_s}")
        params = {"Bucket": self.bucket, "Key": self._object_key(key)}
        with _translated(f"presign {key}"):
            url: str = self._s3.generate_presigned_url(method, Params=params, ExpiresIn=expires_s)
        return url


@contextlib.contextmanager
def _translated(what: str, *, key: str | None = None) -> Any:
    """Translate boto3/botocore failures into tools.errors at the boundary."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if key is not None and code in _NOT_FOUND:
            raise ArtifactNotFound(f"no artifact {key!r}") from exc
        raise ArtifactError(f"S3 {what} failed: {code} {error.get('Message', '')}".strip()) from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise ArtifactError(f"S3 {what} failed: {exc}") from exc
