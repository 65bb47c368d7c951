"""The AccessStreamTree on generated, seeded traces: each workload of issue 15 alone and
interleaved, attributed to the right stream with the right pattern; pattern changes found
within the tracker's bound and no flapping on stationary streams; the memory bounds."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from hermesflow.cache.pattern_tests import (
    CONFIRMATIONS,
    MIN_SAMPLES,
    TEST_INTERVAL,
    StreamPattern,
)
from hermesflow.cache.stream_tree import (
    Access,
    AccessStreamTree,
    NodeKind,
    Position,
    StreamId,
    split_path,
)

MIB = 2**20
SHARD_SIZE = 256 * MIB
SMALL_FILE = 100_000
WARM_UP = 4 * MIN_SAMPLES
"""Accesses after which every stream of a trace has its own window and first verdict."""


# ---- seeded workloads (endless generators of demand reads) --------------------------------


def checkpoint_scan(shard: str, read: int = MIB) -> Iterator[Access]:
    """A checkpoint shard read front to back in `read`-byte ranges, again and again."""
    while True:
        for offset in range(0, SHARD_SIZE, read):
            yield Access(shard, offset, read, size=SHARD_SIZE)


def epochs(rng: np.random.Generator, prefix: str, files: int) -> Iterator[Access]:
    """Training epochs: every file once per epoch, in a new random order each time."""
    while True:
        for index in rng.permutation(files):
            yield Access(f"{prefix}f{index:06d}", 0, SMALL_FILE, size=SMALL_FILE)


def zipf_reads(
    rng: np.random.Generator, prefix: str, items: int, exponent: float
) -> Iterator[Access]:
    """Feature lookups: file k (1-based rank) read with probability proportional to k^-exponent."""
    weights = np.arange(1, items + 1, dtype=float) ** -exponent
    while True:
        for index in rng.choice(items, size=1024, p=weights / weights.sum()):
            yield Access(f"{prefix}feat{index:05d}", 0, SMALL_FILE, size=SMALL_FILE)


def key_order_scan(prefix: str) -> Iterator[Access]:
    """A one-pass preprocessing scan: every file once, in key order, never again."""
    index = 0
    while True:
        yield Access(f"{prefix}{index:08d}.json", 0, 10_000, size=10_000)
        index += 1


def random_ranges(rng: np.random.Generator, shard: str) -> Iterator[Access]:
    """Uniformly random 1 MiB ranges of one large object."""
    while True:
        yield Access(shard, int(rng.integers(SHARD_SIZE // MIB)) * MIB, MIB, size=SHARD_SIZE)


def take(stream: Iterator[Access], count: int) -> list[Access]:
    return [next(stream) for _ in range(count)]


def record_all(
    tree: AccessStreamTree, accesses: list[Access]
) -> list[tuple[StreamId, StreamPattern]]:
    """Each access's stream and that stream's pattern right after it was recorded."""
    out = []
    for access in accesses:
        stream = tree.record(access)
        out.append((stream, tree.info(stream).pattern))
    return out


# ---- paths and streams ---------------------------------------------------------------------


def test_paths_split_into_bucket_prefixes_and_object() -> None:
    assert split_path("s3://bucket/a/b/key") == ["s3://bucket", "a", "b", "key"]
    assert split_path("/tmp/data//x.bin") == ["/tmp", "data", "x.bin"]
    assert split_path("bucket/key") == ["bucket", "key"]
    with pytest.raises(ValueError, match="names no object"):
        split_path("s3://bucket/prefix/")


def test_first_accesses_belong_to_the_parent_prefix_until_a_window_can_be_tested() -> None:
    tree = AccessStreamTree(block_size=MIB)
    results = record_all(tree, take(checkpoint_scan("s3://b/ckpt/shard-0"), 3 * MIN_SAMPLES))
    prefix = StreamId("s3://b/ckpt/", NodeKind.PREFIX)
    shard = StreamId("s3://b/ckpt/shard-0", NodeKind.OBJECT)
    assert [stream for stream, _ in results[: MIN_SAMPLES - 1]] == [prefix] * (MIN_SAMPLES - 1)
    assert results[MIN_SAMPLES - 2][1] is StreamPattern.UNKNOWN
    assert {stream for stream, _ in results[MIN_SAMPLES - 1 :]} == {shard}
    assert results[-1][1] is StreamPattern.SEQUENTIAL


def test_a_sequential_shard_scan_looks_ahead_and_behind_by_blocks() -> None:
    tree = AccessStreamTree(block_size=4 * MIB)
    accesses = take(checkpoint_scan("s3://b/ckpt/shard-0", read=MIB), 200)
    stream = record_all(tree, accesses)[-1][0]
    info = tree.info(stream)
    assert info.pattern is StreamPattern.SEQUENTIAL
    assert info.position == Position("s3://b/ckpt/shard-0", 200 * MIB)
    assert info.behind == Position("s3://b/ckpt/shard-0", 199 * MIB)
    assert tree.ahead(stream, 3) == tuple(
        Position("s3://b/ckpt/shard-0", block * 4 * MIB) for block in (50, 51, 52)
    )
    assert (info.distinct_items, info.window_bytes) == (50, 200 * MIB)
    assert (info.known_items, info.known_bytes) == (SHARD_SIZE // (4 * MIB), SHARD_SIZE)
    # near the end of the object, the look-ahead stops at its last block
    record_all(tree, take(checkpoint_scan("s3://b/ckpt/shard-0", read=MIB), 249))
    assert tree.ahead(stream, 3) == (Position("s3://b/ckpt/shard-0", 252 * MIB),)


def test_a_random_epoch_over_small_files_is_one_random_stream_with_its_working_set() -> None:
    tree = AccessStreamTree()
    results = record_all(tree, take(epochs(np.random.default_rng(1), "s3://b/train/", 300), 3000))
    prefix = StreamId("s3://b/train/", NodeKind.PREFIX)
    assert {stream for stream, _ in results[WARM_UP:]} == {prefix}
    assert {pattern for _, pattern in results[WARM_UP:]} == {StreamPattern.RANDOM}
    info = tree.info(prefix)
    assert (info.distinct_items, info.window_bytes) == (300, 300 * SMALL_FILE)
    assert (info.known_items, info.known_bytes) == (300, 300 * SMALL_FILE)
    assert info.rate == 1.0  # every access of the tree was this stream's


def test_zipf_feature_reads_are_skewed() -> None:
    rng = np.random.default_rng(2)
    for exponent in (1.0, 1.2):
        tree = AccessStreamTree()
        results = record_all(tree, take(zipf_reads(rng, "s3://b/features/", 500, exponent), 3000))
        assert Counter(pattern for _, pattern in results[1024:]) == {StreamPattern.SKEWED: 1976}


def test_a_one_pass_key_order_scan_is_sequential_and_looks_ahead_on_known_keys() -> None:
    tree = AccessStreamTree()
    scan = take(key_order_scan("s3://raw/logs/"), 400)
    results = record_all(tree, scan)
    assert {pattern for _, pattern in results[MIN_SAMPLES:]} == {StreamPattern.SEQUENTIAL}
    stream = results[-1][0]
    assert stream == StreamId("s3://raw/logs/", NodeKind.PREFIX)
    assert tree.ahead(stream, 2) == ()  # nothing after the newest key is known yet
    record_all(tree, scan[:10])  # a second pass: the keys after the tenth are known
    assert tree.ahead(stream, 2) == (
        Position("s3://raw/logs/00000010.json", 0),
        Position("s3://raw/logs/00000011.json", 0),
    )
    assert tree.info(stream).behind == Position("s3://raw/logs/00000009.json", 0)


def test_interleaved_workloads_are_separated_into_their_streams() -> None:
    rng = np.random.default_rng(3)
    workloads = {
        "epoch": (epochs(rng, "s3://data/train/", 2000), StreamPattern.RANDOM),
        "features": (zipf_reads(rng, "s3://data/features/", 500, 1.1), StreamPattern.SKEWED),
        "scan": (key_order_scan("s3://raw/logs/"), StreamPattern.SEQUENTIAL),
        "shard-0": (checkpoint_scan("s3://data/ckpt/shard-0"), StreamPattern.SEQUENTIAL),
        "shard-1": (checkpoint_scan("s3://data/ckpt/shard-1"), StreamPattern.SEQUENTIAL),
        "ranges": (random_ranges(rng, "s3://data/table/part-0"), StreamPattern.RANDOM),
    }
    expected_stream = {
        "epoch": StreamId("s3://data/train/", NodeKind.PREFIX),
        "features": StreamId("s3://data/features/", NodeKind.PREFIX),
        "scan": StreamId("s3://raw/logs/", NodeKind.PREFIX),
        "shard-0": StreamId("s3://data/ckpt/shard-0", NodeKind.OBJECT),
        "shard-1": StreamId("s3://data/ckpt/shard-1", NodeKind.OBJECT),
        "ranges": StreamId("s3://data/table/part-0", NodeKind.OBJECT),
    }
    names = list(workloads)
    order = rng.choice(len(names), size=30_000)
    tree = AccessStreamTree(block_size=MIB)
    right = wrong = 0
    for position, choice in enumerate(order):
        name = names[choice]
        source, pattern = workloads[name]
        stream = tree.record(next(source))
        if position >= 1024 * len(names):  # every stream has had a full window
            if (stream, tree.info(stream).pattern) == (expected_stream[name], pattern):
                right += 1
            else:
                wrong += 1
    assert wrong == 0 and right > 20_000
    assert {info.stream for info in tree.streams()} == set(expected_stream.values())


# ---- changes of pattern --------------------------------------------------------------------

CHANGE_BOUND = 128 + CONFIRMATIONS * TEST_INTERVAL
"""The tracker's bound for a change the recent window sees: recent window + confirmations."""


def _switch_delay(first: Iterator[Access], second: Iterator[Access], target: StreamPattern) -> int:
    tree = AccessStreamTree(block_size=MIB)
    results = record_all(tree, take(first, 2000))
    before = results[-1][1]
    assert {pattern for _, pattern in results[500:]} == {before}, "flapped before the change"
    after = record_all(tree, take(second, 2000))
    patterns = [pattern for _, pattern in after]
    delay = patterns.index(target)
    assert set(patterns[delay:]) == {target}, "flapped after the change"
    return delay


def test_sequential_to_random_switches_within_the_bound_and_stays() -> None:
    rng = np.random.default_rng(4)
    shard = "s3://b/ckpt/shard-0"
    delay = _switch_delay(checkpoint_scan(shard), random_ranges(rng, shard), StreamPattern.RANDOM)
    assert delay <= CHANGE_BOUND


def test_random_to_sequential_switches_within_the_bound_and_stays() -> None:
    rng = np.random.default_rng(5)
    shard = "s3://b/ckpt/shard-0"
    delay = _switch_delay(
        random_ranges(rng, shard), checkpoint_scan(shard), StreamPattern.SEQUENTIAL
    )
    assert delay <= CHANGE_BOUND


def test_random_files_to_skewed_files_switches_within_the_bound() -> None:
    rng = np.random.default_rng(6)
    delay = _switch_delay(
        epochs(rng, "s3://b/data/", 3000),
        zipf_reads(rng, "s3://b/data/", 500, 1.1),
        StreamPattern.SKEWED,
    )
    assert delay <= CHANGE_BOUND


def test_stationary_streams_do_not_flap() -> None:
    rng = np.random.default_rng(7)
    for source in (
        epochs(rng, "s3://b/train/", 5000),
        zipf_reads(rng, "s3://b/features/", 500, 1.0),
        random_ranges(rng, "s3://b/table/part-0"),
        key_order_scan("s3://b/raw/"),
    ):
        results = record_all(AccessStreamTree(block_size=MIB), take(source, 8000))
        patterns = [pattern for _, pattern in results[1024:]]
        assert sum(a is not b for a, b in itertools.pairwise(patterns)) == 0


# ---- bounds ------------------------------------------------------------------------------


def test_node_and_window_bounds_hold_over_a_long_trace_of_fresh_paths() -> None:
    rng = np.random.default_rng(8)
    tree = AccessStreamTree(window=256, recent_window=64, max_nodes=2000)
    buckets = rng.integers(20, size=100_000)
    prefixes = rng.integers(1000, size=100_000)
    keys = rng.integers(10**6, size=100_000)
    for step in range(100_000):
        tree.record(Access(f"s3://b{buckets[step]}/p{prefixes[step]}/k{keys[step]}", 0, 10))
        if step % 10_000 == 0:
            assert len(tree) <= 2001
    assert len(tree) == 2001
    assert tree.window_entries <= 2001 * (256 + 64)
    root = tree.info(StreamId("", NodeKind.ROOT))
    assert root.accesses == 256
    live_objects = sum(1 for _ in _objects(tree))  # pruning kept the known-object counts right
    assert (root.known_items, root.known_bytes) == (live_objects, 10 * live_objects)


def _objects(tree: AccessStreamTree) -> Iterator[str]:
    """The live object nodes, counted white-box from the root."""
    stack = [tree._root]
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        if node.stream.kind is NodeKind.OBJECT:
            yield node.stream.path


def test_the_least_recently_used_subtree_is_pruned_first() -> None:
    tree = AccessStreamTree(max_nodes=32)  # the bucket, hot/ and its 30 files
    cold = take(key_order_scan("s3://b/cold/"), 20)
    record_all(tree, cold)
    hot = take(epochs(np.random.default_rng(9), "s3://b/hot/", 30), 600)
    record_all(tree, hot)
    assert tree.info(StreamId("s3://b/hot/", NodeKind.PREFIX)).known_items == 30
    with pytest.raises(KeyError, match="pruned or never recorded"):
        tree.info(StreamId("s3://b/cold/", NodeKind.PREFIX))


def test_rates_follow_the_given_times() -> None:
    tree = AccessStreamTree()
    stream = None
    for step in range(100):
        stream = tree.record(Access("s3://b/p/k", step * MIB, MIB, time=0.5 * step))
    assert stream is not None
    assert tree.info(stream).rate == pytest.approx(2.0)


def test_bad_arguments_say_what_to_give() -> None:
    with pytest.raises(ValueError, match="recent_window <= window"):
        AccessStreamTree(window=64, recent_window=128)
    with pytest.raises(ValueError, match="block size"):
        AccessStreamTree(block_size=0)
    with pytest.raises(ValueError, match=">= 0"):
        AccessStreamTree().record(Access("s3://b/k", -1, 10))
