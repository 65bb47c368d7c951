"""The `igtcache` filesystem over local targets (memory://, file://): options, reads through the
tiers compared byte for byte with the origin, block granularity, versions, refused writes,
pickling, and every online replacement policy in each tier. S3 has its own modules."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import fsspec
import pytest
from filesystem_support import BLOCK, MiB, random_ranges, seeded_bytes

from hermesflow.cache.filesystem import IGTCacheFileSystem, ReadOnlyError
from hermesflow.cache.registry import CachePolicyKind

SIZE = 3 * MiB + 12345
"""A large object: 13 blocks of BLOCK, the last one short."""


@pytest.fixture(params=["memory", "file"])
def origin(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(target filesystem, a directory on it) for each local target."""
    fs = fsspec.filesystem(request.param)
    root = f"/igt-{tmp_path.name}" if request.param == "memory" else str(tmp_path / "origin")
    fs.makedirs(root, exist_ok=True)
    yield fs, root
    fs.rm(root, recursive=True)


def cache_over(
    target: fsspec.AbstractFileSystem, tmp_path: Path, **options: Any
) -> IGTCacheFileSystem:
    options = {
        "block_size": BLOCK,
        "disk_dir": str(tmp_path / "cache"),
        "disk_bytes": 64 * MiB,
        **options,
    }
    return IGTCacheFileSystem(fs=target, skip_instance_cache=True, **options)


def cached_object(
    origin: tuple[Any, str], tmp_path: Path, data: bytes, **options: Any
) -> tuple[Any, str, IGTCacheFileSystem]:
    """(target, path, cache): `data` stored at `path` on the target, and a cache over it."""
    target, root = origin
    path = f"{root}/obj"
    target.pipe_file(path, data)
    return target, path, cache_over(target, tmp_path, **options)


# ---- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"memory_byte": 1}, "memory_byte"),
        ({"memory_bytes": -1}, "memory_bytes"),
        ({"memory_bytes": True}, "memory_bytes"),
        ({"block_size": 0}, "block_size"),
        ({"disk_dir": "/tmp/x"}, "disk_bytes"),
        ({"disk_bytes": MiB}, "disk_dir"),
        ({"small_object_bytes": 10, "block_size": 100}, "small_object_bytes"),
        ({"etag_ttl_s": -1}, "etag_ttl_s"),
        ({"memory_policy": "belady"}, "memory_policy"),
        ({"disk_policy": "mru"}, "disk_policy"),
    ],
)
def test_a_bad_option_is_an_error_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises((TypeError, ValueError), match=named):
        IGTCacheFileSystem(target_protocol="memory", skip_instance_cache=True, **options)


def test_the_target_is_given_exactly_once() -> None:
    with pytest.raises(ValueError, match="target_protocol"):
        IGTCacheFileSystem(skip_instance_cache=True)
    with pytest.raises(ValueError, match="not both"):
        IGTCacheFileSystem(
            fs=fsspec.filesystem("memory"), target_protocol="memory", skip_instance_cache=True
        )


# ---- reads ---------------------------------------------------------------------------------


def test_reads_match_the_origin_byte_for_byte(origin: tuple[Any, str], tmp_path: Path) -> None:
    target, root = origin
    data = seeded_bytes(1, SIZE)
    target.pipe_file(f"{root}/big", data)
    target.pipe_file(f"{root}/empty", b"")
    fs = cache_over(target, tmp_path, memory_bytes=MiB)  # smaller than the object: evictions
    for attempt in range(2):  # first from the origin, then from the tiers
        with fs.open(f"{root}/big") as file:
            assert file.size == SIZE
            for start, end in random_ranges(attempt, SIZE, 40):
                file.seek(start)
                assert file.read(end - start) == data[start:end]
            file.seek(0)
            assert file.read() == data
    assert fs.cat_file(f"{root}/big", -100) == data[-100:]
    assert fs.cat_file(f"{root}/big", 10, -10) == data[10:-10]
    assert fs.cat_file(f"{root}/big", SIZE - 5, SIZE + 100) == data[-5:]
    assert fs.cat_file(f"{root}/empty") == b""
    results = fs.cat_ranges(
        [f"{root}/big", f"{root}/big", f"{root}/missing"], [0, BLOCK - 1, 0], [5, BLOCK + 1, 1]
    )
    assert results[:2] == [data[:5], data[BLOCK - 1 : BLOCK + 1]]
    assert isinstance(results[2], FileNotFoundError)
    assert fs.stats.memory.hits > 0 and fs.stats.disk.hits > 0


def test_small_objects_are_read_whole_and_large_ones_by_block(
    origin: tuple[Any, str], tmp_path: Path
) -> None:
    target, root = origin
    target.pipe_file(f"{root}/small", seeded_bytes(2, 3 * BLOCK))
    target.pipe_file(f"{root}/large", seeded_bytes(3, 5 * BLOCK))
    fs = cache_over(target, tmp_path, small_object_bytes=4 * BLOCK)
    assert fs.cat_file(f"{root}/small", 10, 20) == seeded_bytes(2, 3 * BLOCK)[10:20]
    assert fs.stats.origin.bytes == 3 * BLOCK  # the whole object, one item
    assert (
        fs.cat_file(f"{root}/large", BLOCK + 10, BLOCK + 20)
        == seeded_bytes(3, 5 * BLOCK)[BLOCK + 10 : BLOCK + 20]
    )
    assert fs.stats.origin.bytes == 4 * BLOCK  # one block more
    fs.cat_file(f"{root}/large", 0, 5 * BLOCK)  # one GET for block 0, one for blocks 2-4
    assert (fs.stats.origin.gets, fs.stats.origin.bytes) == (4, 8 * BLOCK)


def test_blocks_move_from_memory_to_disk_hits(origin: tuple[Any, str], tmp_path: Path) -> None:
    data = seeded_bytes(4, 8 * BLOCK)
    _, path, fs = cached_object(origin, tmp_path, data, memory_bytes=2 * BLOCK)
    assert fs.cat_file(path) == data
    gets = fs.stats.origin.gets
    assert fs.cat_file(path) == data  # memory holds the last two blocks only
    stats = fs.stats
    assert stats.origin.gets == gets
    # memory held blocks 6 and 7, but a scan under LRU evicts them before it reaches them
    assert (stats.memory.hits, stats.disk.hits) == (0, 8)
    assert fs.cat_file(path, 6 * BLOCK) == data[6 * BLOCK :]
    assert (fs.stats.memory.hits, fs.stats.disk.hits) == (2, 8)


def test_an_overwrite_is_never_served_stale(origin: tuple[Any, str], tmp_path: Path) -> None:
    target, path, fs = cached_object(origin, tmp_path, seeded_bytes(5, 3 * BLOCK))
    assert fs.cat_file(path) == seeded_bytes(5, 3 * BLOCK)
    target.pipe_file(path, seeded_bytes(6, 3 * BLOCK + 7))
    assert fs.cat_file(path) == seeded_bytes(6, 3 * BLOCK + 7)
    with fs.open(path) as file:
        assert file.read() == seeded_bytes(6, 3 * BLOCK + 7)
    assert not list((tmp_path / "cache").glob("tmp/*"))


def test_a_version_ttl_trusts_the_last_check_until_invalidated(
    origin: tuple[Any, str], tmp_path: Path
) -> None:
    target, path, fs = cached_object(origin, tmp_path, b"old bytes", etag_ttl_s=3600)
    assert fs.cat_file(path) == b"old bytes"
    target.pipe_file(path, b"new bytes!")
    assert fs.cat_file(path) == b"old bytes"  # within the TTL, as documented
    fs.invalidate_cache(path)
    assert fs.cat_file(path) == b"new bytes!"


def test_writes_are_refused_and_leave_the_origin_alone(
    origin: tuple[Any, str], tmp_path: Path
) -> None:
    target, path, fs = cached_object(origin, tmp_path, b"kept")
    root = path.rsplit("/", 1)[0]
    attempts = [
        lambda: fs.open(path, "wb"),
        lambda: fs.pipe_file(path, b"x"),
        lambda: fs.rm(path),
        lambda: fs.rm_file(path),
        lambda: fs.mkdir(f"{root}/dir"),
        lambda: fs.makedirs(f"{root}/dir"),
        lambda: fs.copy(path, f"{root}/copy"),
        lambda: fs.mv(path, f"{root}/moved"),
        lambda: fs.put_file(__file__, f"{root}/put"),
    ]
    for attempt in attempts:
        with pytest.raises(ReadOnlyError, match="write to the target"):
            attempt()
    assert target.cat_file(path) == b"kept"
    assert sorted(p.rsplit("/", 1)[-1] for p in target.ls(root, detail=False)) == ["obj"]


def test_listings_are_the_targets(origin: tuple[Any, str], tmp_path: Path) -> None:
    target, root = origin
    target.makedirs(f"{root}/a", exist_ok=True)
    target.pipe_file(f"{root}/a/b", b"1")
    fs = cache_over(target, tmp_path)
    assert fs.ls(root, detail=False) == target.ls(root, detail=False)
    assert fs.isdir(f"{root}/a") and fs.isfile(f"{root}/a/b") and not fs.exists(f"{root}/c")
    with pytest.raises(IsADirectoryError):
        fs.cat_file(f"{root}/a")


@pytest.mark.parametrize("kind", [k for k in CachePolicyKind if k is not CachePolicyKind.BELADY])
def test_every_online_policy_runs_each_tier(kind: CachePolicyKind, tmp_path: Path) -> None:
    target = fsspec.filesystem("memory")
    path = f"/igt-policy-{tmp_path.name}/obj"
    data = seeded_bytes(7, 16 * BLOCK)
    target.pipe_file(path, data)
    fs = cache_over(
        target,
        tmp_path,
        memory_bytes=3 * BLOCK,
        disk_bytes=6 * BLOCK,
        memory_policy=kind,
        disk_policy=kind,
    )
    for start, end in random_ranges(8, len(data), 60):
        assert fs.cat_file(path, start, end) == data[start:end]
    stats = fs.stats
    assert stats.memory.hits + stats.disk.hits > 0
    assert (
        stats.disk.admitted_bytes - stats.disk.evicted_bytes - stats.disk.discarded_bytes
        <= 6 * BLOCK
    )
    stored = sum(
        f.stat().st_size for f in (tmp_path / "cache" / "blocks").rglob("*") if f.is_file()
    )
    assert stored <= 6 * BLOCK
    target.rm(path)


# ---- pickling ------------------------------------------------------------------------------


def _read_unpickled(payload: bytes, path: str, start: int, end: int) -> tuple[bytes, int, int]:
    fs = pickle.loads(payload)
    data = fs.cat_file(path, start, end)
    return data, fs.stats.origin.gets, fs.stats.disk.prefetch_hits + fs.stats.disk.hits


def test_pickling_drops_the_memory_tier_and_rebuilds_in_another_process(tmp_path: Path) -> None:
    target = fsspec.filesystem("file")
    path = str(tmp_path / "obj")
    data = seeded_bytes(9, 4 * BLOCK)
    target.pipe_file(path, data)
    fs = IGTCacheFileSystem(
        target_protocol="file",
        block_size=BLOCK,
        disk_dir=str(tmp_path / "cache"),
        disk_bytes=64 * MiB,
    )
    assert fs.cat_file(path) == data  # the memory tier now holds 1 MiB
    payload = pickle.dumps(fs)
    assert len(payload) < 2000  # options only: no bytes, no locks, no connections
    assert pickle.loads(payload) is fs  # fsspec's instance cache, within one process
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        read, gets, disk_hits = pool.apply(_read_unpickled, (payload, path, 100, 3 * BLOCK))
    assert read == data[100 : 3 * BLOCK]
    assert (gets, disk_hits) == (0, 3)  # a fresh process: empty memory, hits on the shared disk
