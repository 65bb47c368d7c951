"""The `igtcache` disk tier over S3 (a moto server on 127.0.0.1): corrupt files detected and
fetched again, the index surviving a restart, old versions dropped, and four processes sharing
one directory. Every byte read is compared with the object's."""

from __future__ import annotations

import multiprocessing
import zlib
from pathlib import Path

from filesystem_support import (
    BLOCK,
    MiB,
    MotoS3,
    igtcache,
    moto_fixtures,
    read_ranges_in_a_process,
    seeded_bytes,
)

from hermesflow.cache.disk_index import DiskIndex, IndexRow
from hermesflow.cache.disk_tier import block_name

SIZE = 2 * MiB + 4321


s3, key = moto_fixtures(SIZE)


def block_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("blocks/*/*"))


def rows(directory: Path) -> list[IndexRow]:
    return DiskIndex(directory).rows_after(0)


def block_file(directory: Path, row: IndexRow) -> Path:
    return directory / "blocks" / row.name[:2] / row.name


def test_a_corrupt_or_truncated_block_is_dropped_and_fetched_again(
    s3: MotoS3, key: str, tmp_path: Path
) -> None:
    data = seeded_bytes(0, SIZE)
    fs = igtcache(s3, tmp_path, memory_bytes=0)  # every read goes to disk
    assert fs.cat_file(key) == data
    gets = len(s3.object_requests("GET", key))
    files = {row.key.start: block_file(tmp_path, row) for row in rows(tmp_path)}
    flipped, truncated = files[0], files[2 * BLOCK]  # not adjacent: one GET each
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:-1])
    assert fs.cat_file(key) == data
    assert fs.stats.corrupt_blocks == 2
    assert len(s3.object_requests("GET", key)) == gets + 2  # the two blocks, again
    assert fs.cat_file(key) == data  # and stored again, intact
    assert len(s3.object_requests("GET", key)) == gets + 2


def test_the_index_survives_a_restart(s3: MotoS3, key: str, tmp_path: Path) -> None:
    data = seeded_bytes(0, SIZE)
    assert igtcache(s3, tmp_path).cat_file(key) == data
    gets = len(s3.object_requests("GET", key))
    restarted = igtcache(s3, tmp_path)  # a new instance: empty memory, the same directory
    assert restarted.cat_file(key) == data
    assert len(s3.object_requests("GET", key)) == gets
    blocks = -(-SIZE // BLOCK)
    assert restarted.stats.disk.prefetch_hits == blocks  # adopted from the index, then hit
    assert restarted.stats.origin.gets == 0


def test_a_new_version_drops_the_old_ones_blocks_from_disk(
    s3: MotoS3, key: str, tmp_path: Path
) -> None:
    fs = igtcache(s3, tmp_path)
    fs.cat_file(key)
    old = set(block_files(tmp_path))
    s3.s3().pipe_file(key, seeded_bytes(1, SIZE // 2))
    assert fs.cat_file(key) == seeded_bytes(1, SIZE // 2)
    assert not old & set(block_files(tmp_path))
    versions = {row.key.version for row in rows(tmp_path)}
    assert len(versions) == 1


def test_four_processes_share_one_directory_without_corruption(
    s3: MotoS3, key: str, tmp_path: Path
) -> None:
    budget = 3 * MiB // 4  # a third of the object: the processes evict each other's blocks
    work = [(s3.endpoint, key, str(tmp_path), budget, seed, 60) for seed in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(read_ranges_in_a_process, work)
    assert results == [(60, 0)] * 4
    data = seeded_bytes(0, SIZE)
    stored_rows = rows(tmp_path)
    files = block_files(tmp_path)
    assert stored_rows
    assert sorted(block_file(tmp_path, row) for row in stored_rows) == files
    for row in stored_rows:  # every indexed block is whole, checksummed and the origin's bytes
        stored = block_file(tmp_path, row).read_bytes()
        assert block_name(row.key) == row.name and zlib.crc32(stored) == row.crc32
        assert stored == data[row.key.start : row.key.end]
    assert sum(row.key.length for row in stored_rows) <= budget
    assert not list(tmp_path.glob("tmp/*"))
