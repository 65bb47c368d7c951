"""The offline search of each query head's sparse pattern and budget (MInference §3,
"kernel-aware optimal sparse pattern search", Alg. 1).

MInference gives every head, once per model, the pattern and budget that suit it, judged on a real
prompt by recall (the share of causal softmax mass kept). Here each head gets the *cheapest*
candidate whose recall reaches a bar on every search prompt `p`:

    choose argmin_c max_p cost_p(c)  subject to  min_p recall_p(c) >= target + margin

over A-shapes, vertical-slashes and block-sparses (`SearchGrid`). `cost` is the share of the
causal q·k products the candidate computes, estimation included (`head_weights`), so the three
patterns compare on one scale. The recall is that of the index the backend will run: the
**online-estimated** index from the same queries and keys (A-shape: the fixed one). The margin,
and a second search prompt, keep a prompt the search never saw above `target`: one prompt alone
can favour a budget that happens to suit it (more diagonals, say, where another prompt needs
columns), and a margin alone does not catch that.

Scoring every candidate by attending would cost a full attention each. Instead the head's softmax
`W` is computed once (`HeadWeights`) and the candidates are read off it. The online estimate keeps
the top of a ranking (columns and diagonals by their score, key blocks by their pooled logit), so
a budget of `n` keeps the first `n` ranked; cumulative sums along the rankings give every budget of
the grid at once (2-D for vertical-slash: columns x diagonals, with the overlap subtracted). The
cheapest candidate that passes is then checked on its actual estimated index, which differs only
when the ranking has ties at the budget's edge; a failed check moves on to the next candidate.

A head that no candidate serves, or that dense attention serves as cheaply, gets a block-sparse
pattern whose budget covers every block up to `dense_length` tokens: it runs dense, and its
`HeadChoice` says so (`dense`). No head is kept below the bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hermesflow.kernels.attention_reference import group_size
from hermesflow.kernels.head_weights import (
    HeadWeights,
    Kept,
    block_pairs,
    causal_products,
    estimation_products,
    kept_by,
)
from hermesflow.kernels.sparse_estimate import (
    block_scores,
    vertical_slash_coverage,
    vertical_slash_scores,
)
from hermesflow.kernels.sparse_patterns import SparsePattern
from hermesflow.kernels.sparse_prefill import (
    AShape,
    BlockSparse,
    HeadPattern,
    VerticalSlash,
    estimate_index,
)

DEFAULT_TARGET = 0.95
"""MInference's bar: a sparse head keeps at least 95% of the softmax mass."""

DEFAULT_MARGIN = 0.02
"""Searched for 0.97 so that another prompt, whose index differs, still clears 0.95. On SmolLM2
at 8192 tokens, searched on one prompt and checked on the next 8192 tokens of text, 0.02 left 2
heads of 270 at 0.94-0.95, and 0.03 (at a fifth more cost) still one, at 0.93, whose cheapest
budget suited the search prompt only; a second search prompt catches such heads better."""


@dataclass(frozen=True)
class SearchGrid:
    """The candidate budgets, in tokens (`n_blocks`: in blocks of `block` tokens). Powers of two
    keep the distinct budgets few, and the heads of a layer that share one run as one group
    (`sparse_prefill`)."""

    sinks: tuple[int, ...] = (64, 128)
    windows: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    n_verticals: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    n_slashes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    last_queries: int = 64
    block: int = 64
    n_blocks: tuple[int, ...] = (4, 8, 16, 32, 64)

    def __post_init__(self) -> None:
        for name in ("sinks", "windows", "n_verticals", "n_slashes", "n_blocks"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"{name} must hold at least one budget, each at least 1")
        if self.last_queries < 1 or self.block < 1:
            raise ValueError("last_queries and block must be at least 1")


DEFAULT_GRID = SearchGrid()


@dataclass(frozen=True)
class HeadChoice:
    """One head's searched pattern, the recall and cost its online index reached on the search
    prompts (the lowest recall, the highest cost), and whether it is the dense fallback (no
    sparse candidate reached the bar cheaper)."""

    pattern: HeadPattern
    recall: float
    cost: float
    dense: bool


def search_layer(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    target: float = DEFAULT_TARGET,
    margin: float = DEFAULT_MARGIN,
    grid: SearchGrid = DEFAULT_GRID,
    dense_length: int | None = None,
) -> list[HeadChoice]:
    """Each query head's choice for one layer: `q` `[prompts, query_heads, L, dim]`, `k`
    `[prompts, kv_heads, L, dim]`, one batch row per search prompt (grouped-query heads share
    keys). `dense_length` (default `L`) is the longest prompt the dense fallback must cover."""
    if q.shape[0] != k.shape[0]:
        raise ValueError(
            f"q and k must hold the same search prompts (batch rows); got {q.shape[0]} and "
            f"{k.shape[0]}"
        )
    if not 0.0 < target <= 1.0 or margin < 0.0:
        raise ValueError(f"target must be in (0, 1] and margin at least 0; got {target}, {margin}")
    group = group_size(q.shape[1], k.shape[1])
    bar = min(target + margin, 1.0)
    longest = q.shape[-2] if dense_length is None else dense_length
    return [
        search_head(q[:, head], k[:, head // group], scale, bar, grid, longest)
        for head in range(q.shape[1])
    ]


def search_head(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None,
    bar: float,
    grid: SearchGrid,
    dense_length: int,
) -> HeadChoice:
    """The cheapest candidate whose online index keeps at least `bar` of query head `q`
    `[prompts, L, dim]` over its key head `k` `[prompts, L, dim]` on every prompt (module
    docstring)."""
    heads = [HeadWeights.of(q_p, k_p, scale) for q_p, k_p in zip(q, k, strict=True)]
    length = heads[0].length
    blocks = -(-max(dense_length, length) // grid.block)
    dense = BlockSparse(block=grid.block, n_blocks=blocks)
    dense_cost = 1.0 + estimation_products(
        length, SparsePattern.BLOCK_SPARSE, grid.block
    ) / causal_products(length)
    per_prompt = [
        [
            *_a_shapes(head, grid),
            *_vertical_slashes(head, q_p, k_p, scale, grid),
            *_block_sparses(head, q_p, k_p, scale, grid),
        ]
        for head, q_p, k_p in zip(heads, q, k, strict=True)
    ]
    candidates = [(same[0][0], _worst([kept for _, kept in same])) for same in zip(*per_prompt)]
    candidates.sort(key=lambda candidate: (candidate[1].cost, -candidate[1].recall))
    for pattern, estimate in candidates:
        if estimate.cost >= dense_cost:
            break
        if estimate.recall < bar:
            continue
        kept = _worst(
            [_measure(head, q_p, k_p, pattern, scale) for head, q_p, k_p in zip(heads, q, k)]
        )
        if kept.recall >= bar:
            return HeadChoice(
                _with_coverage(pattern, q, k, scale), kept.recall, kept.cost, dense=False
            )
    return HeadChoice(dense, 1.0, dense_cost, dense=True)  # every causal block: all the mass


def measure_layer(
    q: torch.Tensor, k: torch.Tensor, heads: list[HeadPattern], scale: float | None = None
) -> list[Kept]:
    """The recall and cost each head's online index reaches on this prompt (batch 1), as the
    search measured them on its own: to check a configuration on a prompt it was not searched on."""
    if q.shape[0] != 1 or len(heads) != q.shape[1]:
        raise ValueError(
            f"measure one prompt (batch 1) with one pattern per query head; got a batch of "
            f"{q.shape[0]}, {q.shape[1]} heads and {len(heads)} patterns"
        )
    group = group_size(q.shape[1], k.shape[1])
    return [
        _measure(
            HeadWeights.of(q[0, h], k[0, h // group], scale), q[0, h], k[0, h // group], p, scale
        )
        for h, p in enumerate(heads)
    ]


Candidate = tuple[HeadPattern, Kept]


def _worst(per_prompt: list[Kept]) -> Kept:
    """A candidate over several prompts: its lowest recall and its highest cost."""
    return Kept(min(k.recall for k in per_prompt), max(k.cost for k in per_prompt))


def _measure(
    head: HeadWeights, q: torch.Tensor, k: torch.Tensor, pattern: HeadPattern, scale: float | None
) -> Kept:
    """The recall and cost of the index `pattern` actually gives on this prompt."""
    index = estimate_index(q[None, None], k[None, None], pattern, scale)
    match pattern:
        case AShape():
            estimation = 0
        case VerticalSlash(last_queries=last):
            estimation = estimation_products(head.length, SparsePattern.VERTICAL_SLASH, last)
        case BlockSparse(block=block):
            estimation = estimation_products(head.length, SparsePattern.BLOCK_SPARSE, block)
    return kept_by(head, index, estimation)


def _a_shapes(head: HeadWeights, grid: SearchGrid) -> list[Candidate]:
    """Every sink x window: columns `0..sink-1` and diagonals `0..window-1`, ranked in order."""
    positions = torch.arange(head.length)
    recall, cost = _columns_by_diagonals(head, positions, positions, grid.sinks, grid.windows, 0)
    return [
        (AShape(sink=sink, window=window), Kept(float(recall[a, b]), float(cost[a, b])))
        for a, sink in enumerate(grid.sinks)
        for b, window in enumerate(grid.windows)
    ]


def _with_coverage(
    pattern: HeadPattern, q: torch.Tensor, k: torch.Tensor, scale: float | None
) -> HeadPattern:
    """A vertical-slash choice with the lowest last-query coverage its budgets reached on the
    search prompts, from which a harder prompt grows them (`estimate_vertical_slash`); on the
    search prompts themselves it changes nothing, so the recall measured stands."""
    if not isinstance(pattern, VerticalSlash):
        return pattern
    covered = vertical_slash_coverage(
        q[:, None], k[:, None], pattern.n_vertical, pattern.n_slash, pattern.last_queries, scale
    )
    return pattern.model_copy(update={"coverage": float(covered.min())})


def _vertical_slashes(
    head: HeadWeights, q: torch.Tensor, k: torch.Tensor, scale: float | None, grid: SearchGrid
) -> list[Candidate]:
    """Every n_vertical x n_slash: the top of the estimate's column and diagonal rankings."""
    column_score, diagonal_score = vertical_slash_scores(
        q[None, None], k[None, None], grid.last_queries, scale
    )
    estimation = estimation_products(head.length, SparsePattern.VERTICAL_SLASH, grid.last_queries)
    recall, cost = _columns_by_diagonals(
        head,
        column_score[0, 0].argsort(descending=True, stable=True),
        diagonal_score[0, 0].argsort(descending=True, stable=True),
        grid.n_verticals,
        grid.n_slashes,
        estimation,
    )
    return [
        (
            VerticalSlash(n_vertical=n_vertical, n_slash=n_slash, last_queries=grid.last_queries),
            Kept(float(recall[a, b]), float(cost[a, b])),
        )
        for a, n_vertical in enumerate(grid.n_verticals)
        for b, n_slash in enumerate(grid.n_slashes)
    ]


def _columns_by_diagonals(
    head: HeadWeights,
    column_order: torch.Tensor,
    offset_order: torch.Tensor,
    n_columns: tuple[int, ...],
    n_offsets: tuple[int, ...],
    estimation: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall and cost `[len(n_columns), len(n_offsets)]` of keeping the first `n` ranked columns
    and diagonals: `sum C + sum D - overlap`, each a prefix sum along the rankings."""
    length = head.length
    rows = torch.tensor([min(n, length) for n in n_columns]) - 1
    cols = torch.tensor([min(n, length) for n in n_offsets]) - 1
    columns, offsets = column_order[: int(rows.max()) + 1], offset_order[: int(cols.max()) + 1]
    overlap, inside = head.on_columns_and_diagonals(columns, offsets)
    mass = (
        head.columns[columns].double().cumsum(0)[rows, None]
        + head.diagonals[offsets].double().cumsum(0)[None, cols]
        - overlap.double().cumsum(0).cumsum(1)[rows][:, cols]
    )
    pairs = (
        (length - columns).cumsum(0)[rows, None]
        + (length - offsets).cumsum(0)[None, cols]
        - inside.long().cumsum(0).cumsum(1)[rows][:, cols]
    )
    return mass / length, (pairs + estimation).double() / causal_products(length)


def _block_sparses(
    head: HeadWeights, q: torch.Tensor, k: torch.Tensor, scale: float | None, grid: SearchGrid
) -> list[Candidate]:
    """Every n_blocks: each query block keeps its first `max(n_blocks, forced)` ranked key blocks,
    `forced` being its own block and the first (one block for the first query block)."""
    order = block_scores(q[None, None], k[None, None], grid.block, scale)[0, 0].argsort(
        dim=-1, descending=True, stable=True
    )
    count = order.shape[-1]
    mass = head.block_sums(grid.block).double().gather(1, order).cumsum(1)
    pairs = block_pairs(head.length, grid.block).gather(1, order).cumsum(1)
    forced = torch.full((count, 1), 2).clamp(max=count)
    forced[0] = 1
    estimation = estimation_products(head.length, SparsePattern.BLOCK_SPARSE, grid.block)
    candidates: list[Candidate] = []
    for n_blocks in grid.n_blocks:
        last = forced.clamp(min=n_blocks, max=count) - 1
        kept = Kept(
            float(mass.gather(1, last).sum()) / head.length,
            (int(pairs.gather(1, last).sum()) + estimation) / causal_products(head.length),
        )
        candidates.append((BlockSparse(block=grid.block, n_blocks=n_blocks), kept))
    return candidates
