"""The S3 store: any S3 endpoint through boto3 (imported on first use, not at start-up)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from qinfra.artifacts.progress import ProgressFn
from qinfra.artifacts.stores import StoredObject, TransferSettings, Upload, checked_store_uri
from qinfra.core.errors import ArtifactError

# S3 object metadata key (sent as x-amz-meta-sha256) holding the whole file's sha256 in hex. S3's
# own additional checksum of a multipart upload is a checksum of part checksums, which cannot be
# compared with a manifest entry, so the full-file digest travels beside it.
SHA256_METADATA_KEY = "sha256"
# botocore's data loader (service models, endpoint rules: read-only once parsed), shared by the
# clients of every S3Store in this process; created under the lock, since sessions are not
# thread-safe.
_SHARED_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


class _HashSink:
    """A write-only file object that hashes what it is given, so verify never stores a copy.

    It has no seek(), so s3transfer's ranged parallel download hands it the parts in order.
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False



class S3Store:
    """An S3 bucket and prefix; the endpoint, region and credentials come from boto3's own config
    (AWS_ENDPOINT_URL, AWS_PROFILE, ...), so any S3-compatible endpoint works unchanged."""

    def __init__(self, uri: str, settings: TransferSettings) -> None:
        self._uri = checked_store_uri(uri)
        parsed = urlparse(self._uri)
        assert parsed.scheme == "s3", uri  # open_store picks the store by scheme
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.settings = settings
        self._client_cache: Any = None
        self._client_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def _client(self) -> Any:
        """Made once, on first use, under a lock: creating boto3 sessions and clients is not
        thread-safe, while the finished client is shared by the transfer threads."""
        with self._client_lock:
            if self._client_cache is None:
                self._client_cache = self._make_client()
        return self._client_cache

    def _make_client(self) -> Any:
        import boto3
        import botocore.session
        from botocore.config import Config

        # A fresh session (credentials and AWS_* settings read now, as before), but the parsed
        # service model shared: loading it is most of a no-op re-push (~70 ms of ~80).
        session = botocore.session.get_session()
        with _LOADER_LOCK:
            global _SHARED_LOADER
            if _SHARED_LOADER is None:
                _SHARED_LOADER = session.get_component("data_loader")
            session.register_component("data_loader", _SHARED_LOADER)
            return boto3.session.Session(botocore_session=session).client(
                "s3",
                config=Config(
                    max_pool_connections=max(10, self.settings.max_concurrency + 2),
                    retries={"mode": "standard"},
                ),
            )

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        with self._errors("reach"):
            self._client.head_bucket(Bucket=self.bucket)

    def bucket_exists(self) -> bool:
        """Whether the bucket is there (a first `up` creates it before pushing); ArtifactError
        for anything but a plain "no such bucket" (no credentials, no access, no network)."""
        from botocore.exceptions import ClientError

        with self._errors("reach"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
        return True

    def stat(self, key: str) -> StoredObject | None:
        head = self._head(key)
        if head is None:
            return None
        return StoredObject(size=head["ContentLength"], sha256=_stored_sha256(head))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with self._errors("read"):
            try:
                head: dict[str, Any] = self._client.head_object(
                    Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
                )
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        return head

    def upload(self, uploads: Sequence[Upload], progress: ProgressFn) -> None:
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager

        if not uploads:
            return
        subscribers = [ProgressCallbackInvoker(progress)]
        with (
            self._errors("upload to"),
            create_transfer_manager(self._client, self.settings.boto_config()) as manager,
        ):
            futures = [
                manager.upload(
                    str(item.path),
                    self.bucket,
                    self._key(item.key),
                    extra_args=_put_args(item.sha256),
                    subscribers=subscribers,
                )
                for item in uploads
            ]
            for future in futures:
                future.result()
        with ThreadPoolExecutor(self.settings.max_concurrency) as pool:
            heads = list(pool.map(self._head, [item.key for item in uploads]))
        for item, head in zip(uploads, heads, strict=True):
            self._verify_uploaded(item, head)

    def _verify_uploaded(self, item: Upload, head: dict[str, Any] | None) -> None:
        """Compare what S3 now holds with what was hashed: size, recorded digest, and for a
        single-part object S3's own SHA256 of the bytes it received."""
        where = f"{self.uri}/{item.key}"
        if head is None:
            raise ArtifactError(f"{where} is missing right after its upload. To fix: push again")
        size, recorded = head["ContentLength"], _recorded_sha256(head)
        server = head.get("ChecksumSHA256")
        server_ok = server is None or _composite(head) or _b64_to_hex(server) == item.sha256
        if size != item.size or recorded != item.sha256 or not server_ok:
            raise ArtifactError(
                f"{where} does not match its manifest entry after upload: store has {size} "
                f"bytes, sha256 {recorded} (S3 checksum {server}); expected {item.size} bytes, "
                f"sha256 {item.sha256}. To fix: make sure nothing rewrites the source or the "
                "object during the push, then push again"
            )

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with self._errors("read"):
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            except ClientError as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    return None
                raise
            data: bytes = body.read()
        return data

    def write(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        with self._errors("write to"):
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **_put_args(digest)
            )

    def rehash(self, keys: Sequence[str], progress: ProgressFn) -> dict[str, StoredObject | None]:
        from boto3.s3.transfer import ProgressCallbackInvoker, create_transfer_manager
        from botocore.exceptions import ClientError

        subscribers = [ProgressCallbackInvoker(progress)]
        result: dict[str, StoredObject | None] = {}
        with (
            self._errors("read"),
            create_transfer_manager(self._client, self.settings.boto_config()) as manager,
        ):
            sinks = {key: _HashSink() for key in keys}
            futures = {
                key: manager.download(self.bucket, self._key(key), sink, subscribers=subscribers)
                for key, sink in sinks.items()
            }
            for key, future in futures.items():
                try:
                    future.result()
                except ClientError as exc:
                    if _status(exc) != 404:
                        raise
                    result[key] = None
                    continue
                sink = sinks[key]
                result[key] = StoredObject(size=sink.size, sha256=sink.digest.hexdigest())
        return result

    def list_dirs(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        names: list[str] = []
        with self._errors("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(base) :].rstrip("/"))
        return sorted(names)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn botocore's failures into messages that name the bucket, endpoint and a fix."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ArtifactError(
                f"cannot {action} {self.uri}: {exc}. To fix: set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except EndpointConnectionError as exc:
            raise ArtifactError(
                f"cannot {action} {self.uri}: {exc}. To fix: check AWS_ENDPOINT_URL and the network"
            ) from None
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket" or (status == 404 and code in {"404", "NotFound"}):
                raise ArtifactError(
                    f"bucket '{self.bucket}' does not exist at endpoint {self.endpoint}; "
                    "create it or fix qinfra:artifacts.store"
                ) from None
            if status == 403:
                raise ArtifactError(
                    f"access denied to {self.uri} at endpoint {self.endpoint} ({code}). To fix: "
                    "use credentials allowed s3:ListBucket, s3:GetObject and s3:PutObject there"
                ) from None
            message = exc.response.get("Error", {}).get("Message", "")
            raise ArtifactError(
                f"cannot {action} {self.uri} at endpoint {self.endpoint}: {code} {message}"
            ) from None


def _put_args(sha256: str) -> dict[str, Any]:
    """Every object: server-side encryption, an S3 SHA256 checksum per request or part, and the
    full-file digest as metadata. No ACL is ever sent, so the bucket's (private) default holds."""
    return {
        "ServerSideEncryption": "AES256",
        "ChecksumAlgorithm": "SHA256",
        "Metadata": {SHA256_METADATA_KEY: sha256},
    }


def _stored_sha256(head: dict[str, Any]) -> str | None:
    """The sha256 of what an object holds, as far as a HEAD can tell, or None when it cannot.

    A single-part object's ChecksumSHA256 is S3's own digest of the bytes it stores, so it wins
    over the recorded metadata (an overwrite that copied the metadata is caught). A multipart
    object's checksum is one of part checksums: there the recorded digest is taken when S3
    checked every part on arrival. No S3 checksum at all means the object was not written by a
    push: None, so push sends it again.
    """
    server = head.get("ChecksumSHA256")
    if not server:
        return None
    if _composite(head):
        return _recorded_sha256(head)
    return _b64_to_hex(server)


def _composite(head: dict[str, Any]) -> bool:
    return "-" in head.get("ETag", "") or head.get("ChecksumType") == "COMPOSITE"


def _recorded_sha256(head: dict[str, Any]) -> str | None:
    value = head.get("Metadata", {}).get(SHA256_METADATA_KEY)
    return str(value) if value else None


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
