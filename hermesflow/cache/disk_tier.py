"""The disk tier: blocks as files in a local directory, indexed with their CRC-32.

Layout of the directory: `index.sqlite` (see `disk_index`), `blocks/<ab>/<name>` (one file per
block, `name` a hash of its key) and `tmp/` (files being written).

What it guarantees, each tested in `tests/cache/test_filesystem_disk.py`:

- **No corrupt bytes served.** Every read is checked against the length and CRC-32 recorded
  at store time; a mismatch (a flipped bit, a file cut short by a crash) drops the block, and
  the read counts as a miss, which fetches it again.
- **Atomic files, rows and files together.** A block is written to `tmp/`, then renamed into
  place and indexed in one index transaction, and an evicted block's row and file are removed
  in another: the index's write lock orders these changes across processes, so no process
  can remove a file that another has just stored under a new row. A reader sees a whole file
  or none; one reading a file while it is removed keeps its open copy, and one that finds the
  row or the file gone counts a miss. A crash between the rename and the commit leaves an
  unindexed file, which the next store of that block replaces.
- **It survives a restart.** A new tier on the same directory adopts the indexed blocks.
- **Processes share it.** Several processes may use one directory at once. Each runs its own
  replacement policy over the blocks it knows: those indexed when it started, those it
  stored, and those other processes stored, which it adopts each time it stores a block (and
  on a hit on one).

Adopted blocks enter the policy through `prefetch`, the contract's only admission that is not
a demand access: a first hit on a block this process did not store is therefore counted under
`prefetch_hits`, and adoptions under `prefetches` (the disk tier prefetches nothing else yet).

The budget holds in each process's view, which includes every block it has seen stored; a
block another process evicted stays counted until this process looks it up, so the sum on
disk stays at or below the budget. Processes sharing a directory should give it one budget.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from hermesflow.cache.blocks import BlockKey, ObjectVersion
from hermesflow.cache.disk_index import DiskIndex, IndexRow
from hermesflow.cache.replacement import Key, Outcome, ReplacementCache
from hermesflow.cache.tier import Tier

logger = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0
"""A file in `tmp/` older than this was left by a writer that died: removed at start (a live
writer renames its file within the time one block takes to write)."""


def block_name(key: BlockKey) -> str:
    """The file name of `key`: a hash of the whole key, so names never collide in practice."""
    text = f"{key.url}\0{key.version}\0{key.start}\0{key.length}"
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class DiskTier(Tier):
    """Blocks as checksummed files under `directory`, admitted and evicted by `policy`."""

    def __init__(self, directory: Path, policy: ReplacementCache) -> None:
        super().__init__(policy)
        self.directory = directory
        self._temp = directory / "tmp"
        self._temp.mkdir(parents=True, exist_ok=True)
        (directory / "blocks").mkdir(exist_ok=True)
        self._index = DiskIndex(directory)
        self._seen = 0
        """The highest index `seq` this process has adopted."""
        self._corrupt = 0
        self._remove_stale_temp_files()
        rows = self._index.rows_after(0)
        with self._lock:
            evicted = self._adopt(rows)
        self._delete(evicted)

    @property
    def corrupt_blocks(self) -> int:
        """Blocks dropped because their file did not match its recorded length and CRC-32."""
        with self._lock:
            return self._corrupt

    def lookup(self, key: BlockKey) -> bytes | None:
        name = block_name(key)
        row = self._index.get(name)
        data = None if row is None else self._read_checked(row)
        with self._lock:
            evicted: tuple[Key, ...] = ()
            if data is None and key not in self._pending:
                self._policy.discard(key)  # gone: evicted elsewhere, or corrupt
            elif data is not None and key not in self._policy:
                evicted = self._admit_stored(key)  # stored by another process
            resident, more = self._access(key)
            evicted += more
            if data is not None and not resident:
                evicted += (key,)  # larger than this process's budget: do not keep it
        self._delete(evicted)
        return data

    def fill(self, key: BlockKey, data: bytes) -> None:
        with self._lock:
            if key not in self._pending:
                return
        name = block_name(key)
        temp = self._temp / f"{name}.{os.getpid()}.{threading.get_ident()}"
        try:
            temp.write_bytes(data)
            final = self._path(name)
            final.parent.mkdir(exist_ok=True)
            with self._index.update() as index:
                os.replace(temp, final)
                index.add(name, key, zlib.crc32(data))
                rows = index.rows_after(self._seen)
        except (OSError, DBAPIError) as error:  # a full or failing disk costs hits, not the read
            logger.warning("igtcache: could not store a block in %s: %s", self.directory, error)
            self.abandon(key)
            return
        finally:
            temp.unlink(missing_ok=True)
        with self._lock:
            kept = key in self._pending  # not evicted or discarded while it was written
            self._pending.discard(key)
            evicted = self._adopt(rows)
        self._delete(evicted if kept else (*evicted, key))

    def discard_stale(self, obj: ObjectVersion) -> None:
        stale = [row.key for row in self._index.stale(obj.url, obj.version)]
        with self._lock:
            self._discard(stale)
        self._delete(stale)

    # ---- files and index --------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / "blocks" / name[:2] / name

    def _read_checked(self, row: IndexRow) -> bytes | None:
        """The block's bytes if its file matches its row; None (and the block dropped) if not."""
        try:
            data = self._path(row.name).read_bytes()
        except FileNotFoundError:
            return None  # evicted by another process since the index was read
        if len(data) == row.key.length and zlib.crc32(data) == row.crc32:
            return data
        logger.warning("igtcache: dropping corrupt block %s of %s", row.name, row.key.url)
        with self._lock:
            self._corrupt += 1
            self._discard((row.key,))
        self._delete((row.key,))
        return None

    def _adopt(self, rows: Iterable[IndexRow]) -> tuple[Key, ...]:
        """Under the lock: admit the blocks of `rows` this policy does not know (stored by other
        processes or earlier instances); the keys to delete (evicted to make room, or larger
        than the budget)."""
        evicted: tuple[Key, ...] = ()
        for row in rows:
            self._seen = max(self._seen, row.seq)
            if row.key not in self._policy:
                evicted += self._admit_stored(row.key)
        return evicted

    def _admit_stored(self, key: BlockKey) -> tuple[Key, ...]:
        """Under the lock: admit `key`, already on disk, without a demand access (a prefetch,
        see the module docstring); the keys to delete, `key` itself if it does not fit."""
        result = self._policy.prefetch(key, key.length)
        evicted = result.evicted
        if result.outcome is Outcome.BYPASSED:
            evicted += (key,)
        self._pending.difference_update(evicted)
        return evicted

    def _delete(self, keys: Iterable[Key]) -> None:
        """Remove the rows and the files of `keys` (the policy has already let them go)."""
        names = [block_name(key) for key in keys]
        if not names:
            return
        with self._index.update() as index:
            index.remove(names)
            for name in names:
                self._path(name).unlink(missing_ok=True)

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for temp in self._temp.iterdir():
            try:
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except FileNotFoundError:
                pass  # removed by another process starting at the same time
