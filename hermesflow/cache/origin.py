"""The origin behind the `igtcache` tiers: version checks and consistent range reads.

Two promises the tiers rely on:

- **A version names fixed bytes.** `object_version` turns the target's `info` into a version
  string; a read for `ObjectVersion(version=v)` returns bytes of version v or fails with
  `ObjectChangedError`, never bytes of another version. On S3 the GET is conditional
  (`If-Match: <ETag>`, or the `VersionId` of a versioned bucket), so S3 itself refuses a changed
  object. Other targets (memory://, file://, ...) have no conditional read: the object is
  checked again after the read, which catches every change that completes before the check.
- **A failure is an error, never bytes.** A read returning fewer bytes than asked, or failing
  after the retries below, raises `OriginError` naming the object and range; nothing is cached.

What is retried where (S3):

- botocore retries each HTTP request by its own configuration (legacy mode: 5 attempts, on
  connection errors, 5xx and throttling); set it with `s3={"config_kwargs": {"retries": ...}}`.
- s3fs's `_call_s3` retries a request that raised one of `s3fs.core.S3_RETRYABLE_ERRORS`
  (timeouts, connection and parser errors) or was throttled (`SlowDown`), `retries` times (the
  S3 filesystem's attribute, default 5) with exponential back-off.
- Here: a response body cut off mid-transfer (the same retryable errors, raised while reading)
  is fetched again with a new GET, up to the same `retries` times.

Other targets get whatever retrying their filesystem does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from hermesflow.cache.blocks import ObjectVersion

VERSION_FIELDS = ("VersionId", "ETag", "etag", "generation", "mtime", "LastModified", "created")
"""`info` fields that change when an object is overwritten, most precise first: a version id,
an entity tag (S3, HTTP, Azure), a generation (GCS), then modification times (local and
memory filesystems), which miss a same-size rewrite within the clock's resolution."""

_CONDITIONS = {"VersionId": "VersionId", "ETag": "IfMatch"}
"""S3 GetObject parameter that pins each version field (a version id names immutable bytes; an
ETag is checked by the server)."""


class OriginError(OSError):
    """The origin failed to serve a range after the retries (the module docstring says which);
    nothing was cached. Cached blocks are still served; the read works again once the origin
    answers."""


class ObjectChangedError(OSError):
    """The object was overwritten after this reader checked its version."""

    def __init__(self, obj: ObjectVersion) -> None:
        super().__init__(
            f"{obj.url} changed on the origin after igtcache checked its version "
            f"({obj.version}); open it again to read the new version"
        )


def object_version(info: Mapping[str, Any]) -> str:
    """The version of the object `info` describes: `<field>=<value>` of the first field of
    `VERSION_FIELDS` it has, and its size (a size change is a change whatever the field)."""
    for field in VERSION_FIELDS:
        value = info.get(field)
        if value not in (None, ""):
            return f"{field}={value};size={info['size']}"
    raise ValueError(
        f"the target reports no version for {info.get('name')!r} (none of {VERSION_FIELDS} in "
        f"its info): igtcache cannot tell an overwrite from the cached bytes; cache a "
        f"filesystem whose info carries an ETag, a version id or a modification time"
    )


@dataclass(frozen=True, slots=True)
class OriginStats:
    """What the cache asked of the origin."""

    gets: int = 0
    """Range or whole-object reads (each one GET on S3)."""
    bytes: int = 0
    version_checks: int = 0
    """`info` calls (a HEAD each on S3)."""


class Origin:
    """Reads of one target filesystem, with their count; generic over any fsspec filesystem.

    `_get` is the one primitive a target-specific origin overrides (see `S3Origin`).
    Thread-safe: the counters have a lock, the target is fsspec's (thread-safe for reads).
    """

    def __init__(self, target: AbstractFileSystem) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._gets = self._bytes = self._checks = 0

    @property
    def stats(self) -> OriginStats:
        with self._lock:
            return OriginStats(self._gets, self._bytes, self._checks)

    def info(self, path: str) -> dict[str, Any]:
        """The target's current `info` for `path`, bypassing its listings cache (a listing may
        be older than the object)."""
        with self._lock:
            self._checks += 1
        self.target.invalidate_cache(path)
        try:
            return self.target.info(path)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as error:  # the boundary: every other failure reads as unavailable
            raise OriginError(
                f"igtcache could not check the version of {path!r}: {error}"
            ) from error

    def describe(self, info: Mapping[str, Any]) -> ObjectVersion:
        """The version a file's `info` describes."""
        name = info["name"]
        return ObjectVersion(
            name, self.target.unstrip_protocol(name), object_version(info), info["size"]
        )

    def read(self, obj: ObjectVersion, start: int, end: int) -> bytes:
        """Bytes [start, end) of exactly version `obj` (see the module docstring)."""
        try:
            data = self._get(obj, start, end)
        except (FileNotFoundError, PermissionError, ObjectChangedError):
            raise
        except Exception as error:  # the boundary: every other failure reads as unavailable
            raise OriginError(
                f"igtcache could not read bytes {start}-{end} of {obj.url} from the origin: "
                f"{error!r}; check that the origin is reachable (cached blocks are still served)"
            ) from error
        with self._lock:
            self._gets += 1
            self._bytes += len(data)
        if len(data) != end - start:
            raise OriginError(
                f"the origin returned {len(data)} bytes for bytes {start}-{end} of {obj.url} "
                f"(expected {end - start}); nothing was cached, read again"
            )
        return data

    def _get(self, obj: ObjectVersion, start: int, end: int) -> bytes:
        """Read, then check the version again: the target offers no conditional read."""
        data = self.target.cat_file(obj.path, start=start, end=end)
        if self.describe(self.info(obj.path)).version != obj.version:
            raise ObjectChangedError(obj)
        return data


class S3Origin(Origin):
    """An s3fs target: conditional ranged GETs, so S3 refuses bytes of another version."""

    def _get(self, obj: ObjectVersion, start: int, end: int) -> bytes:
        field, _, value = obj.version.partition(";")[0].partition("=")
        if field not in _CONDITIONS:
            return super()._get(obj, start, end)
        bucket, key, _ = self.target.split_path(obj.path)
        try:
            return sync(
                self.target.loop,
                _conditional_get,
                self.target,
                {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"},
                {_CONDITIONS[field]: value},
            )
        except OSError as error:
            if _precondition_failed(error):
                raise ObjectChangedError(obj) from error
            raise


async def _conditional_get(s3: Any, request: dict[str, str], condition: dict[str, str]) -> bytes:
    """One GetObject through s3fs (which retries the request), again when the body breaks."""
    from s3fs.core import S3_RETRYABLE_ERRORS

    attempt = 1
    while True:
        response = await s3._call_s3("get_object", **request, **condition)
        body = response["Body"]
        try:
            return await body.read()
        except S3_RETRYABLE_ERRORS:
            if attempt >= s3.retries:
                raise
        finally:
            body.close()
        attempt += 1


def _precondition_failed(error: OSError) -> bool:
    """Whether s3fs's `error` is S3's 412 (the ETag no longer matches)."""
    from botocore.exceptions import ClientError

    cause = error.__cause__
    return isinstance(cause, ClientError) and cause.response["Error"].get("Code") == (
        "PreconditionFailed"
    )


def origin_for(target: AbstractFileSystem) -> Origin:
    """The origin reader suited to `target`: conditional GETs on s3fs, the generic one else."""
    protocols = (target.protocol,) if isinstance(target.protocol, str) else target.protocol
    return S3Origin(target) if "s3" in protocols else Origin(target)
