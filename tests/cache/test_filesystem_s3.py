"""The `igtcache` filesystem over S3 (a moto server on 127.0.0.1): the chained URL in a fresh
interpreter, GETs counted by the server, overwrites, the origin going down and coming back,
and a read in a Ray task. Every byte read is compared with the object's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filesystem_support import (
    BLOCK,
    MiB,
    MotoS3,
    igtcache,
    moto_fixtures,
    random_ranges,
    running_moto,
    seeded_bytes,
)

from hermesflow.cache.filesystem import IGTCacheFileSystem
from hermesflow.cache.origin import ObjectChangedError, OriginError

SIZE = 2 * MiB + 777


s3, key = moto_fixtures(SIZE)


_FRESH_READ = """
import fsspec, hashlib, json, sys
url, s3_options, cache_options = json.loads(sys.argv[1])
with fsspec.open(url, "rb", igtcache=cache_options, s3=s3_options) as file:
    print(type(file.fs).__name__, hashlib.sha256(file.read()).hexdigest())
"""


def test_a_chained_url_opens_in_a_fresh_interpreter(s3: MotoS3, key: str, tmp_path: Path) -> None:
    import hashlib

    cache = {"disk_dir": str(tmp_path), "disk_bytes": 16 * MiB, "block_size": BLOCK}
    argument = json.dumps([f"igtcache::s3://{key}", s3.s3_options(), cache])
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_READ, argument],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = hashlib.sha256(seeded_bytes(0, SIZE)).hexdigest()
    assert done.stdout.split() == ["IGTCacheFileSystem", expected]
    gets = s3.object_requests("GET", key)
    assert gets and all(request.range for request in gets)  # ranged GETs, through the cache
    assert list(tmp_path.glob("blocks/*/*"))  # and the disk tier filled


def test_each_block_is_fetched_once_and_then_served_from_the_tiers(
    s3: MotoS3, key: str, tmp_path: Path
) -> None:
    data = seeded_bytes(0, SIZE)
    fs = igtcache(s3, tmp_path)
    ranges = random_ranges(1, SIZE, 50)
    for _ in range(2):
        with fs.open(key) as file:
            for start, end in ranges:
                file.seek(start)
                assert file.read(end - start) == data[start:end]
    gets = s3.object_requests("GET", key)
    assert len(gets) == fs.stats.origin.gets
    fetched = sum(int(b) - int(a) + 1 for a, b in (r.range[6:].split("-") for r in gets))
    assert fetched == fs.stats.origin.bytes <= SIZE  # no block twice
    assert fs.stats.memory.hits > 0
    assert len(s3.object_requests("HEAD", key)) == 2  # one version check per open


def test_an_overwrite_between_two_opens_is_read_new(s3: MotoS3, key: str, tmp_path: Path) -> None:
    fs = igtcache(s3, tmp_path)
    with fs.open(key) as file:
        assert file.read() == seeded_bytes(0, SIZE)
    s3.s3().pipe_file(key, seeded_bytes(1, SIZE))  # same size: only the ETag tells
    with fs.open(key) as file:
        assert file.read() == seeded_bytes(1, SIZE)
    assert fs.cat_file(key, 5, 50) == seeded_bytes(1, SIZE)[5:50]


def test_an_open_file_refuses_bytes_of_a_newer_version(
    s3: MotoS3, key: str, tmp_path: Path
) -> None:
    fs = igtcache(s3, tmp_path)
    with fs.open(key) as file:
        assert file.read(BLOCK) == seeded_bytes(0, SIZE)[:BLOCK]
        s3.s3().pipe_file(key, seeded_bytes(2, SIZE))
        file.seek(0)
        assert file.read(BLOCK) == seeded_bytes(0, SIZE)[:BLOCK]  # cached: still the old version
        file.seek(4 * BLOCK)
        with pytest.raises(ObjectChangedError, match="open it again"):
            file.read(10)  # S3 refuses the conditional GET: no mixed versions
    with fs.open(key) as file:
        assert file.read() == seeded_bytes(2, SIZE)


def test_an_unreachable_origin_is_a_clear_error_and_reads_resume_after(tmp_path: Path) -> None:
    with running_moto() as server:
        key = f"{server.new_bucket()}/data.bin"
        data = seeded_bytes(3, SIZE)
        server.s3().pipe_file(key, data)
        # botocore makes one attempt per s3fs try, s3fs tries twice: the error comes in seconds
        once = {"config_kwargs": {"retries": {"max_attempts": 1}}}
        fs = igtcache(server, tmp_path, once, etag_ttl_s=3600, memory_bytes=0)
        strict = igtcache(server, tmp_path / "strict", once)
        for cache in (fs, strict):
            cache.target.retries = 2  # s3fs's attribute (not a constructor option)
        assert fs.cat_file(key, 0, BLOCK) == data[:BLOCK]
        server.stop()
        try:
            assert fs.cat_file(key, 10, BLOCK) == data[10:BLOCK]  # cached: served from disk
            began = time.monotonic()
            with pytest.raises(OriginError, match=r"could not read bytes .* check that the origin"):
                fs.cat_file(key, 3 * BLOCK, 3 * BLOCK + 10)
            with pytest.raises(OriginError, match="could not check the version"):
                strict.cat_file(key, 0, 10)  # etag_ttl_s=0: a version check needs the origin
            assert time.monotonic() - began < 30
        finally:
            server.start()
        assert fs.cat_file(key, 3 * BLOCK, 3 * BLOCK + 10) == data[3 * BLOCK : 3 * BLOCK + 10]
        assert strict.cat_file(key) == data


def test_a_ray_task_reads_through_the_unpickled_filesystem(
    s3: MotoS3, key: str, tmp_path: Path, ray_cluster: None
) -> None:
    import ray

    fs = igtcache(s3, tmp_path)
    assert fs.cat_file(key, 0, 3 * BLOCK) == seeded_bytes(0, SIZE)[: 3 * BLOCK]

    def read_in_a_task(fs: IGTCacheFileSystem, start: int, end: int) -> tuple[bytes, int]:
        return fs.cat_file(key, start, end), fs.stats.origin.gets  # by value: a local function

    task = ray.remote(num_cpus=0)(read_in_a_task)
    data, gets = ray.get(task.remote(fs, BLOCK, 4 * BLOCK), timeout=120)
    assert data == seeded_bytes(0, SIZE)[BLOCK : 4 * BLOCK]
    assert gets == 1  # blocks 1-2 from the shared disk tier, block 3 from S3
