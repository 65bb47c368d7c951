"""The AccessStreamTree: recent accesses organised by the path hierarchy, split into streams.

Hermesflow's design of IGTCache's tree (arXiv 2506.12370; `docs/cache.md` states it). A path
`s3://bucket/a/b/key` is a chain of nodes: the root, the bucket `s3://bucket/`, one node per
prefix (`s3://bucket/a/`, `s3://bucket/a/b/`) and the object `s3://bucket/a/b/key`; the byte
ranges read are the entries of the object's window. Every access is pushed into the window of
each node on its chain, so each node sees exactly the accesses below it:

- an object's window holds byte ranges; its *items* are blocks (offset // block_size) and its
  positions byte offsets, so a checkpoint shard's sequential scan shows there;
- a prefix's window holds its objects' accesses; its items are objects and its positions
  (key, offset), so an epoch over small files, Zipf-skewed feature reads or a one-pass scan in
  key order show there.

**Streams.** An access belongs to one stream, a node chosen after the windows are updated: its
object, if the object's window can be tested (`MIN_SAMPLES` accesses) and spans at least two
blocks (a large object read in ranges); otherwise the deepest ancestor whose window can be
tested; otherwise (the first accesses of all) the object's parent. So large objects are
streams of their own and small objects are items of their prefix's stream, and a new stream
inside a busy prefix is attributed to that prefix for its first `MIN_SAMPLES` accesses only.
A stream is named by its node's path (`StreamId`), stable across pruning and restarts.

**Bounded memory.** Windows hold at most `window` entries (the recent window `recent_window`),
and the tree at most `max_nodes` nodes: beyond that the least recently used nodes are pruned.
A chain is refreshed from the object up, so a parent is always more recent than its children
and the least recently used node is always a leaf: pruning removes whole cold subtrees, leaf by
leaf, and never a node on the chain being recorded. Memory is O(max_nodes * window) entries.

Not thread-safe: the filesystem serialises its calls, as it does for the replacement policy.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from hermesflow.cache.pattern_tests import (
    MIN_SAMPLES,
    TEST_INTERVAL,
    PatternTracker,
    StreamPattern,
    WindowEntry,
    WindowSample,
)

DEFAULT_BLOCK_SIZE = 4 * 2**20
"""The block of a large object's window; pass the filesystem's own block size."""
DEFAULT_WINDOW = 1024
"""Entries per node: enough for the skew test to find Zipf(1.1) over 500 items (~100 % power)."""
DEFAULT_RECENT_WINDOW = 128
"""Entries of the change detector's window: a stopped scan fails the ascent test within it."""
DEFAULT_MAX_NODES = 4096
_SEPARATOR = "/"
_PROTOCOL = "://"


class NodeKind(Enum):
    """What a node of the tree stands for."""

    ROOT = "root"
    BUCKET = "bucket"
    PREFIX = "prefix"
    OBJECT = "object"


class Access(NamedTuple):
    """One read: `length` bytes at `offset` of the object at `path`.

    `time` is when it happened, in any unit (rates come out per that unit); None uses the
    tree's count of accesses. Give times always or never. `size` is the object's size, when
    known (it bounds the blocks ahead of a scan and sizes the working set).
    """

    path: str
    offset: int
    length: int
    time: float | None = None
    size: int | None = None


class Position(NamedTuple):
    """A byte position in an object."""

    path: str
    offset: int


class StreamId(NamedTuple):
    """A stream's name: its node's path (prefixes end with '/'; the root is '') and kind."""

    path: str
    kind: NodeKind


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the policies read about a stream, from its node's window."""

    stream: StreamId
    pattern: StreamPattern
    accesses: int
    """Accesses in the window."""
    distinct_items: int
    """Items in the window: blocks of an object stream, objects of a prefix stream."""
    window_bytes: int
    """Bytes of those items: the working set the window has seen."""
    known_items: int
    """Items the tree knows below the node: objects under a prefix (bounded by pruning), or an
    object's blocks (from its size)."""
    known_bytes: int
    rate: float
    """Accesses per time unit over the window (0 with fewer than two, inf if no time passed)."""
    position: Position
    """Where the latest access ended: a sequential stream reads on from here."""
    behind: Position
    """Where the latest access started: a sequential stream has passed what lies before it
    (smaller offsets of this object, or, for a prefix, objects with smaller keys)."""


def split_path(path: str) -> list[str]:
    """The components of `path`: bucket (with its protocol, or a leading '/'), prefixes, object.

    Empty components are dropped, so 'a//b' and 'a/b' are one object.
    """
    protocol, found, rest = path.partition(_PROTOCOL)
    head = protocol + _PROTOCOL if found else (_SEPARATOR if path.startswith(_SEPARATOR) else "")
    components = [part for part in (rest if found else path).split(_SEPARATOR) if part]
    if not components or path.endswith(_SEPARATOR):
        raise ValueError(f"{path!r} names no object; give the path of an object, like s3://b/k")
    components[0] = head + components[0]
    return components


class _Node:
    """One node: its window, recent window, pattern and the bookkeeping the policies read."""

    __slots__ = (
        "children", "item_bytes", "known_bytes", "known_objects", "last_end", "last_object",
        "last_offset", "name", "objects", "parent", "previous", "recent", "seen", "size", "sized",
        "stream", "tested_at", "tracker", "window", "window_bytes",
    )  # fmt: skip

    def __init__(
        self, stream: StreamId, name: str, parent: _Node | None, window: int, recent: int
    ) -> None:
        self.stream = stream
        self.name = name  # the key in the parent's children
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.objects: list[str] = []  # the names of the object children, sorted: for `ahead`
        self.window = WindowSample(window)
        self.recent = WindowSample(recent)
        self.item_bytes: dict[Hashable, int] = {}
        self.window_bytes = 0
        self.tracker = PatternTracker()
        self.seen = 0  # accesses ever pushed
        self.tested_at = 0  # `seen` at the last test
        self.previous: Any = None  # the position of the latest access, for the ascent flag
        self.last_object = ""
        self.last_offset = 0
        self.last_end = 0
        self.known_objects = 0
        self.known_bytes = 0
        self.size = 0  # an object's size, or the furthest byte read while it is unknown
        self.sized = False  # whether `size` is the object's size

    def push(self, item: Hashable, position: Any, access: Access, when: float, nbytes: int) -> None:
        """Add one access to both windows and to the window's working-set bytes.

        `position` orders the stream (an offset in an object's window, (object, offset) in a
        prefix's); the access is an ascent if it is greater than the previous one's.
        """
        ascent = self.previous is not None and position > self.previous
        self.previous = position
        entry = WindowEntry(item, ascent, when, nbytes)
        dropped = self.window.push(entry)
        if dropped is not None:
            self._forget(dropped)
        self.recent.push(entry)
        known = self.item_bytes.get(item)
        if known is None:
            self.item_bytes[item] = nbytes
            self.window_bytes += nbytes
        elif nbytes > known:
            self.item_bytes[item] = nbytes
            self.window_bytes += nbytes - known
        self.seen += 1
        self.last_object = access.path
        self.last_offset = access.offset
        self.last_end = access.offset + access.length

    def retest(self) -> None:
        """Re-test the pattern when `TEST_INTERVAL` accesses have come since the last test."""
        due = self.seen - self.tested_at >= TEST_INTERVAL
        if self.tracker.pattern is not StreamPattern.UNKNOWN and not due:
            return
        self.tested_at = self.seen
        if self.tracker.update(self.window, self.recent):
            for dropped in self.window.truncate(self.recent.accesses):
                self._forget(dropped)

    def _forget(self, dropped: WindowEntry) -> None:
        """Remove a dropped item's bytes once no entry of it is left (a truncation drops an
        item's entries together, hence the default)."""
        if dropped.item not in self.window.counts:
            self.window_bytes -= self.item_bytes.pop(dropped.item, 0)


class AccessStreamTree:
    """Recent accesses by path, with each access attributed to a classified stream.

    Call `record` for every demand read (not for prefetches: they are guesses, not the
    workload); it returns the access's stream. `info` describes a stream, `streams` lists the
    active ones, `ahead` gives where a sequential stream goes next.
    """

    def __init__(
        self,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        window: int = DEFAULT_WINDOW,
        recent_window: int = DEFAULT_RECENT_WINDOW,
        max_nodes: int = DEFAULT_MAX_NODES,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size is {block_size}; give the filesystem's block size")
        if not MIN_SAMPLES <= recent_window <= window:
            raise ValueError(
                f"windows of {window} and {recent_window} entries: give "
                f"{MIN_SAMPLES} <= recent_window <= window"
            )
        if max_nodes < 2:
            raise ValueError(f"max_nodes is {max_nodes}; a tree needs at least 2 nodes")
        self._block_size = block_size
        self._window = window
        self._recent_window = recent_window
        self._max_nodes = max_nodes
        self._root = _Node(StreamId("", NodeKind.ROOT), "", None, window, recent_window)
        self._nodes: OrderedDict[str, _Node] = OrderedDict()  # all but the root, oldest first
        self._streams: OrderedDict[str, int] = OrderedDict()  # stream path -> last attributed
        self._sequence = 0

    # ---- recording -------------------------------------------------------------------------

    def record(self, access: Access) -> StreamId:
        """Add one demand read to the tree and return the stream it belongs to."""
        if access.offset < 0 or access.length < 0 or (access.size is not None and access.size < 0):
            raise ValueError(f"{access!r}: offsets, lengths and sizes are byte counts >= 0")
        self._sequence += 1
        when = float(self._sequence) if access.time is None else access.time
        chain = self._chain(access.path)
        leaf = chain[-1]
        if access.path != leaf.stream.path:  # positions name objects as the tree does
            access = access._replace(path=leaf.stream.path)
        end = access.offset + access.length
        if access.size is not None:
            self._learn_size(leaf, access.size)
            leaf.sized = True
        else:
            self._learn_size(leaf, end)
        block = access.offset // self._block_size
        block_bytes = min(self._block_size, max(leaf.size - block * self._block_size, 0))
        leaf.push(block, access.offset, access, when, block_bytes)
        position = (access.path, access.offset)
        for node in chain[:-1]:
            node.push(access.path, position, access, when, leaf.size)
        for node in reversed(chain[1:]):
            self._nodes.move_to_end(node.stream.path)
        self._prune(leaf)
        stream = self._attribute(chain)
        stream.retest()
        self._streams[stream.stream.path] = self._sequence
        self._streams.move_to_end(stream.stream.path)
        return stream.stream

    def _chain(self, path: str) -> list[_Node]:
        """The nodes from the root to the object at `path`, created where missing."""
        components = split_path(path)
        chain = [self._root]
        node = self._root
        last = len(components) - 1
        for depth, component in enumerate(components):
            is_object = depth == last
            name = component if is_object else component + _SEPARATOR
            child = node.children.get(name)
            if child is None:
                child = self._new_child(node, name, is_object, depth)
            chain.append(child)
            node = child
        return chain

    def _new_child(self, parent: _Node, name: str, is_object: bool, depth: int) -> _Node:
        if is_object:
            kind = NodeKind.OBJECT
        else:
            kind = NodeKind.BUCKET if depth == 0 else NodeKind.PREFIX
        stream = StreamId(parent.stream.path + name, kind)
        child = _Node(stream, name, parent, self._window, self._recent_window)
        parent.children[name] = child
        self._nodes[stream.path] = child
        if is_object:
            bisect.insort(parent.objects, name)
            self._add_known(parent, objects=1, nbytes=0)
        return child

    def _learn_size(self, leaf: _Node, size: int) -> None:
        """Raise the object's size to `size`, and its ancestors' known bytes with it."""
        if size > leaf.size:
            self._add_known(leaf.parent, objects=0, nbytes=size - leaf.size)
            leaf.size = size

    @staticmethod
    def _add_known(node: _Node | None, objects: int, nbytes: int) -> None:
        while node is not None:
            node.known_objects += objects
            node.known_bytes += nbytes
            node = node.parent

    def _prune(self, leaf: _Node) -> None:
        """Drop least recently used nodes (always leaves) down to `max_nodes`."""
        nodes = self._nodes
        while len(nodes) > self._max_nodes:
            victim = next(iter(nodes.values()))
            if victim is leaf or victim.children:  # a chain deeper than max_nodes
                return
            del nodes[victim.stream.path]
            parent = victim.parent
            assert parent is not None  # the root is never in `nodes`
            del parent.children[victim.name]
            if victim.stream.kind is NodeKind.OBJECT:
                del parent.objects[bisect.bisect_left(parent.objects, victim.name)]
                self._add_known(parent, objects=-1, nbytes=-victim.size)
            self._streams.pop(victim.stream.path, None)

    @staticmethod
    def _attribute(chain: list[_Node]) -> _Node:
        """The access's stream (module docstring: large objects, then the deepest testable)."""
        leaf = chain[-1]
        if leaf.window.accesses >= MIN_SAMPLES and leaf.window.distinct >= 2:
            return leaf
        for node in reversed(chain[:-1]):
            if node.window.accesses >= MIN_SAMPLES:
                return node
        return chain[-2]

    # ---- what the policies read ------------------------------------------------------------

    def _node(self, stream: StreamId) -> _Node:
        node = self._root if stream.kind is NodeKind.ROOT else self._nodes.get(stream.path)
        if node is None or node.stream != stream:
            raise KeyError(
                f"no stream {stream.path!r} ({stream.kind.value}) in the tree: it was pruned "
                "or never recorded; use the stream that `record` last returned"
            )
        return node

    def info(self, stream: StreamId) -> StreamInfo:
        """The stream's pattern (as of its last test), working set, rate and position."""
        node = self._node(stream)
        window = node.window
        if stream.kind is NodeKind.OBJECT:
            known_items, known_bytes = -(-node.size // self._block_size), node.size
        else:
            known_items, known_bytes = node.known_objects, node.known_bytes
        rate = 0.0
        if window.accesses >= 2:
            span = window.last.time - window.first.time
            rate = (window.accesses - 1) / span if span > 0 else math.inf
        return StreamInfo(
            stream=stream,
            pattern=node.tracker.pattern,
            accesses=window.accesses,
            distinct_items=window.distinct,
            window_bytes=node.window_bytes,
            known_items=known_items,
            known_bytes=known_bytes,
            rate=rate,
            position=Position(node.last_object, node.last_end),
            behind=Position(node.last_object, node.last_offset),
        )

    def streams(self, horizon: int | None = None) -> list[StreamInfo]:
        """The streams that accesses were attributed to among the last `horizon` accesses
        (default: one window), most recently used first: the ones to share the cache among."""
        oldest = self._sequence - (self._window if horizon is None else horizon)
        active = []
        for path in reversed(self._streams):
            if self._streams[path] <= oldest:
                break
            node = self._root if not path else self._nodes[path]
            active.append(self.info(node.stream))
        return active

    def ahead(self, stream: StreamId, depth: int) -> tuple[Position, ...]:
        """Up to `depth` positions a sequential stream is expected to read next.

        An object stream: the starts of the blocks after the latest access (within the object
        when its size is known). A prefix stream: the starts of the objects after the latest
        one, in key order, among its siblings the tree knows (seen before, e.g. in an earlier
        epoch); objects never seen must come from a listing.
        """
        node = self._node(stream)
        if depth < 1 or not node.seen:
            return ()
        if stream.kind is NodeKind.OBJECT:
            size = self._block_size
            first = -(-node.last_end // size)
            last = first + depth
            if node.sized:
                last = min(last, -(-node.size // size))
            return tuple(Position(stream.path, block * size) for block in range(first, last))
        leaf = self._nodes.get(node.last_object)
        if leaf is None or leaf.parent is None:
            return ()
        siblings = leaf.parent.objects
        start = bisect.bisect_right(siblings, leaf.name)
        prefix = leaf.parent.stream.path
        return tuple(Position(prefix + name, 0) for name in siblings[start : start + depth])

    # ---- size --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Nodes in the tree, the root included."""
        return len(self._nodes) + 1

    @property
    def window_entries(self) -> int:
        """Entries held by all windows (full and recent): what bounds the tree's memory."""
        nodes = [self._root, *self._nodes.values()]
        return sum(node.window.accesses + node.recent.accesses for node in nodes)
