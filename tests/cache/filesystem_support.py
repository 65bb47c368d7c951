"""Helpers of the `igtcache` filesystem tests: a moto S3 server that counts what it serves,
seeded object bytes, and the worker the multi-process test runs."""

from __future__ import annotations

import random
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest

from hermesflow.cache.filesystem import IGTCacheFileSystem

MiB = 2**20
BLOCK = 256 * 1024
"""The block size of most tests: small, so that an object of a few MiB has many blocks."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


class MotoS3:
    """A moto S3 server on 127.0.0.1 in a thread of this process, logging every request.

    The log is the origin's own account of what it served, independent of the cache's
    statistics. Stopping and starting again keeps the port and the objects (moto's state
    lives in this process), as a restarted S3 endpoint would.
    """

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)

        def logged(environ: dict[str, Any], start_response: Any) -> Any:
            request = Request(
                environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_RANGE")
            )
            with self._lock:
                self._requests.append(request)
            return app(environ, start_response)

        self._server = make_server(
            "127.0.0.1", self.port, logged, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()

    def object_requests(self, method: str, key: str | None = None) -> list[Request]:
        """Requests `method` on objects (not buckets); on `key` (`bucket/key`) only if given."""
        with self._lock:
            requests = list(self._requests)
        return [
            r
            for r in requests
            if r.method == method
            and r.path.count("/") >= 2
            and (key is None or r.path == f"/{key}")
        ]

    def s3_options(self, **extra: Any) -> dict[str, Any]:
        """s3fs options for this server; the region through botocore's config, since s3fs's
        `mkdir` rejects one in client_kwargs (../shared/STACK.md pitfall 14)."""
        config = {"region_name": "us-east-1", **extra.pop("config_kwargs", {})}
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint},
            "config_kwargs": config,
            **extra,
        }

    def s3(self) -> fsspec.AbstractFileSystem:
        """A plain s3fs client: how the tests write objects and read what the origin holds."""
        return fsspec.filesystem("s3", skip_instance_cache=True, **self.s3_options())

    def new_bucket(self) -> str:
        name = f"igt-{uuid.uuid4().hex[:12]}"
        self.s3().mkdir(name)
        return name


@contextmanager
def running_moto() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def moto_fixtures(size: int) -> tuple[Any, Any]:
    """The fixtures `s3` (a server for the test module) and `key` (`bucket/key` of a new
    object of `size` bytes, `seeded_bytes(0, size)`), for a module to bind at its top level."""

    @pytest.fixture(scope="module")
    def s3() -> Iterator[MotoS3]:
        with running_moto() as server:
            yield server

    @pytest.fixture
    def key(s3: MotoS3) -> str:
        path = f"{s3.new_bucket()}/data.bin"
        s3.s3().pipe_file(path, seeded_bytes(0, size))
        return path

    return s3, key


def seeded_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def random_ranges(seed: int, size: int, count: int) -> list[tuple[int, int]]:
    """`count` ranges inside an object of `size` bytes, up to about two blocks long."""
    rng = random.Random(seed)
    ranges = []
    for _ in range(count):
        start = rng.randrange(size)
        ranges.append((start, min(size, start + rng.randrange(1, 2 * BLOCK + 2))))
    return ranges


def igtcache(
    s3: MotoS3,
    disk_dir: Path | None = None,
    s3_options: dict[str, Any] | None = None,
    **options: Any,
) -> IGTCacheFileSystem:
    """A new `igtcache` filesystem over `s3` (not fsspec's cached instance); `s3_options` are
    added to the s3fs options."""
    if disk_dir is not None:
        options = {"disk_dir": str(disk_dir), "disk_bytes": 64 * MiB, **options}
    return IGTCacheFileSystem(
        target_protocol="s3",
        target_options={**s3.s3_options(**(s3_options or {})), "skip_instance_cache": True},
        skip_instance_cache=True,
        **{"block_size": BLOCK, **options},
    )


def read_ranges_in_a_process(
    endpoint: str, url: str, disk_dir: str, disk_bytes: int, seed: int, count: int
) -> tuple[int, int]:
    """Worker of the multi-process test: read `count` seeded random ranges of `url` through a
    cache in `disk_dir` (no memory tier, so every read goes to disk or S3) and compare them with
    the object, whose bytes are `seeded_bytes(0, size)`. Returns (ranges read, mismatches)."""
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
        "config_kwargs": {"region_name": "us-east-1"},
    }
    fs = IGTCacheFileSystem(
        target_protocol="s3",
        target_options=options,
        memory_bytes=0,
        disk_dir=disk_dir,
        disk_bytes=disk_bytes,
        block_size=BLOCK,
    )
    size = fs.info(url)["size"]
    expected = seeded_bytes(0, size)
    mismatches = 0
    ranges = random_ranges(seed, size, count)
    with fs.open(url) as file:
        for start, end in ranges:
            file.seek(start)
            mismatches += file.read(end - start) != expected[start:end]
    return len(ranges), mismatches
