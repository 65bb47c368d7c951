"""The offline pattern search: a head built to be A-shape, vertical-slash or block-sparse gets that
pattern at the smallest budget that meets the bar, the same choice as scoring every candidate of
the grid on its estimated mask with the reference `recall`; an unreachable bar gives a dense
pattern that says so; and a configuration of searched heads round-trips. Tiny shapes, CPU only."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hermesflow.kernels.attention_reference import recall
from hermesflow.kernels.head_weights import causal_products, estimation_products
from hermesflow.kernels.pattern_search import (
    SearchGrid,
    measure_layer,
    search_head,
    search_layer,
)
from hermesflow.kernels.sparse_estimate import (
    BUDGET_GROWTH,
    COVERAGE_SLACK,
    MAX_GROWTHS,
    estimate_vertical_slash,
    vertical_slash_coverage,
)
from hermesflow.kernels.sparse_patterns import SparsePattern
from hermesflow.kernels.sparse_prefill import (
    AShape,
    BlockSparse,
    HeadPattern,
    SparsePrefillConfig,
    VerticalSlash,
    estimate_index,
)

LENGTH, DIM = 250, 32
"""No multiple of the block: the last block is partial."""

TARGET, MARGIN = 0.95, 0.02
BAR = TARGET + MARGIN
"""The planted heads clear it by a fair margin at their budget and miss it one budget below."""
GRID = SearchGrid(
    sinks=(4, 8),
    windows=(8, 16, 32),
    n_verticals=(4, 8, 16),
    n_slashes=(4, 8, 16),
    last_queries=16,
    block=16,
    n_blocks=(2, 4, 8),
)


def a_shape_head() -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary-like features make `q_i . k_j` a narrow bump around `i = j` (about 16 tokens
    wide), and the first 4 keys hold a direction every query looks for: a sink."""
    angle = torch.arange(LENGTH).float()[:, None] * torch.linspace(0, 0.15, DIM // 2)
    q = torch.cat([angle.cos(), angle.sin()], dim=-1) * 2.0
    k = q.clone()
    q[:, -1], k[:, -1] = 4.0, 0.0
    k[:4, -1] = 4.0
    return q, k


def vertical_slash_head(
    strengths: tuple[float, ...] = (2.5, 2.6, 2.7, 2.8, 2.9, 3.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key `j` matches query `j + 40` (a diagonal), and six keys scattered over the prompt, the
    first among them, hold a direction every query looks for (columns), with `strengths`
    (distinct by default, so that the ranking of columns has no ties)."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(LENGTH, DIM, generator=generator)
    k = 0.3 * torch.randn(LENGTH, DIM, generator=generator)
    k[: LENGTH - 40] += 2.0 * q[40:]
    shared = torch.randn(DIM, generator=generator)
    q += shared
    k[[0, 37, 90, 151, 170, 200]] = torch.tensor(strengths)[:, None] * shared
    return q, k


def block_sparse_head() -> tuple[torch.Tensor, torch.Tensor]:
    """Each block of 16 tokens is about one of 6 topics, shuffled over the prompt; queries look
    only at the keys of their own topic, two or three blocks."""
    generator = torch.Generator().manual_seed(1)
    topics = torch.randperm(-(-LENGTH // 16), generator=generator) % 6
    per_token = (8.0 * torch.eye(DIM)[topics]).repeat_interleave(16, dim=0)[:LENGTH]
    q = per_token + 0.1 * torch.randn(LENGTH, DIM, generator=generator)
    k = per_token + 0.1 * torch.randn(LENGTH, DIM, generator=generator)
    return q, k


Head = Callable[[], tuple[torch.Tensor, torch.Tensor]]
PLANTED = [
    (a_shape_head, AShape(sink=4, window=16), AShape(sink=4, window=8)),
    (
        vertical_slash_head,
        VerticalSlash(n_vertical=8, n_slash=4, last_queries=16),
        VerticalSlash(n_vertical=4, n_slash=4, last_queries=16),
    ),
    (block_sparse_head, BlockSparse(block=16, n_blocks=4), BlockSparse(block=16, n_blocks=2)),
]


def _reference(q: torch.Tensor, k: torch.Tensor, pattern: HeadPattern) -> tuple[float, float]:
    """Recall and cost of `pattern`'s estimated index, from its full mask: the reference
    `recall`, and the causal pairs the mask keeps plus the estimation's products."""
    mask = estimate_index(q[None, None], k[None, None], pattern).mask(LENGTH)
    size = pattern.block if isinstance(pattern, BlockSparse) else GRID.last_queries
    products = int(mask.sum()) + estimation_products(LENGTH, pattern.pattern, size)
    return float(recall(q[None, None], k[None, None], mask)), products / causal_products(LENGTH)


def _grid_patterns() -> list[HeadPattern]:
    return [
        *(AShape(sink=s, window=w) for s in GRID.sinks for w in GRID.windows),
        *(
            VerticalSlash(n_vertical=v, n_slash=s, last_queries=GRID.last_queries)
            for v in GRID.n_verticals
            for s in GRID.n_slashes
        ),
        *(BlockSparse(block=GRID.block, n_blocks=n) for n in GRID.n_blocks),
    ]


@pytest.mark.parametrize(("head", "expected", "smaller"), PLANTED)
def test_a_planted_head_gets_its_pattern_at_the_smallest_budget_that_meets_the_bar(
    head: Head, expected: HeadPattern, smaller: HeadPattern
) -> None:
    q, k = head()
    choice = search_head(q[None], k[None], None, BAR, GRID, LENGTH)
    assert _budgets(choice.pattern) == expected and not choice.dense
    reached, cost = _reference(q, k, expected)
    assert choice.recall == pytest.approx(reached, abs=1e-5) and choice.recall >= BAR
    assert choice.cost == pytest.approx(cost)
    assert _reference(q, k, smaller)[0] < BAR  # the next budget down misses the bar


def _cheapest_by_masks(prompts: list[tuple[torch.Tensor, torch.Tensor]], bar: float) -> HeadPattern:
    """The cheapest grid candidate that keeps `bar` on every prompt, scored on its masks."""
    passing = []
    for pattern in _grid_patterns():
        scored = [_reference(q, k, pattern) for q, k in prompts]
        reached, cost = min(r for r, _ in scored), max(c for _, c in scored)
        if reached >= bar:
            passing.append((cost, -reached, pattern))
    return min(passing, key=lambda entry: entry[:2])[2]


@pytest.mark.parametrize("head", [planted[0] for planted in PLANTED])
def test_the_search_picks_what_scoring_every_candidate_on_its_mask_picks(head: Head) -> None:
    q, k = head()
    choice = search_head(q[None], k[None], None, BAR, GRID, LENGTH)
    assert _budgets(choice.pattern) == _cheapest_by_masks([(q, k)], BAR)


def _budgets(pattern: HeadPattern) -> HeadPattern:
    """A searched pattern without the coverage a vertical-slash choice records."""
    return (
        pattern.model_copy(update={"coverage": None})
        if isinstance(pattern, VerticalSlash)
        else pattern
    )


def test_a_vertical_slash_choice_records_its_lowest_coverage_on_the_search_prompts() -> None:
    """The coverage lets a harder prompt grow the budgets; on the search prompts it grows
    nothing, so the recall the search measured is the one the configuration gets."""
    first, _, _ = PLANTED[1]
    q, k = first()
    noisy = q + 0.3 * torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    prompts_q, prompts_k = torch.stack([q, noisy]), torch.stack([k, k])
    choice = search_head(prompts_q, prompts_k, None, BAR, GRID, LENGTH)
    assert isinstance(choice.pattern, VerticalSlash)
    covered = vertical_slash_coverage(
        prompts_q[:, None],
        prompts_k[:, None],
        choice.pattern.n_vertical,
        choice.pattern.n_slash,
        GRID.last_queries,
    )
    assert choice.pattern.coverage == pytest.approx(float(covered.min()))
    for prompt_q in prompts_q:
        fixed = estimate_index(prompt_q[None, None], k[None, None], _budgets(choice.pattern))
        grown = estimate_index(prompt_q[None, None], k[None, None], choice.pattern)
        assert torch.equal(fixed.mask(LENGTH), grown.mask(LENGTH))


def test_budgets_grow_only_on_a_prompt_whose_coverage_falls_below_the_searched_one() -> None:
    """Within `COVERAGE_SLACK` of the searched coverage the index is the fixed one; further
    below, both budgets grow by `BUDGET_GROWTH` per step until the coverage is reached."""
    q, k = (t[None, None] for t in vertical_slash_head())
    covered = float(vertical_slash_coverage(q, k, 4, 4, GRID.last_queries))
    fixed = estimate_vertical_slash(q, k, 4, 4, GRID.last_queries)
    near = estimate_vertical_slash(
        q, k, 4, 4, GRID.last_queries, coverage=covered + COVERAGE_SLACK / 2
    )
    assert torch.equal(near.vertical, fixed.vertical) and torch.equal(near.slash, fixed.slash)
    wanted = 0.99  # this head covers 0.848 at 4 x 4, 0.978 at 6 x 6, 0.986 at 14 x 14
    grown = estimate_vertical_slash(q, k, 4, 4, GRID.last_queries, coverage=wanted)
    steps = next(
        n
        for n in range(1, MAX_GROWTHS + 1)
        if float(vertical_slash_coverage(q, k, *_grown(4, 4, n), GRID.last_queries))
        >= wanted - COVERAGE_SLACK
    )
    assert (grown.vertical.shape[-1], grown.slash.shape[-1]) == _grown(4, 4, steps)
    assert steps >= 2  # one step was not enough: the loop went on
    kept = estimate_index(
        q,
        k,
        VerticalSlash(n_vertical=4, n_slash=4, last_queries=GRID.last_queries, coverage=wanted),
    )
    assert torch.equal(kept.vertical, grown.vertical)  # the configuration's field reaches it


def _grown(n_vertical: int, n_slash: int, steps: int) -> tuple[int, int]:
    for _ in range(steps):
        n_vertical, n_slash = (
            math.ceil(n_vertical * BUDGET_GROWTH),
            math.ceil(n_slash * BUDGET_GROWTH),
        )
    return n_vertical, n_slash


def test_a_candidate_must_reach_the_bar_on_every_search_prompt() -> None:
    prompts = [vertical_slash_head(), a_shape_head()]
    choice = search_head(*(torch.stack(t) for t in zip(*prompts)), None, BAR, GRID, LENGTH)
    assert _budgets(choice.pattern) == _cheapest_by_masks(prompts, BAR)
    assert _budgets(choice.pattern) not in {
        PLANTED[0][1],
        PLANTED[1][1],
    }  # each prompt's own is not enough
    assert choice.recall == pytest.approx(
        min(_reference(q, k, choice.pattern)[0] for q, k in prompts), abs=1e-5
    )


def test_a_tie_in_the_ranking_is_judged_on_the_index_actually_estimated() -> None:
    """Six columns of equal keys score alike; the estimate's top-k keeps other ones than the
    ranking read off the weights, and so less mass at 8 columns (0.86 against 0.90)."""
    q, k = vertical_slash_head((2.0,) * 6)
    choice = search_head(q[None], k[None], None, 0.88, GRID, LENGTH)
    assert _budgets(choice.pattern) == _cheapest_by_masks([(q, k)], 0.88)
    assert _budgets(choice.pattern) == VerticalSlash(n_vertical=16, n_slash=4, last_queries=16)
    assert choice.recall == pytest.approx(_reference(q, k, choice.pattern)[0], abs=1e-5)


def test_an_unreachable_bar_gets_a_dense_pattern_that_says_so() -> None:
    generator = torch.Generator().manual_seed(2)
    q, k = (0.2 * torch.randn(LENGTH, DIM, generator=generator) for _ in range(2))
    choice = search_head(q[None], k[None], None, 0.999, GRID, dense_length=4 * LENGTH)
    assert choice.dense and choice.recall == 1.0
    assert choice.pattern == BlockSparse(block=GRID.block, n_blocks=-(-4 * LENGTH // GRID.block))
    reached, cost = _reference(q, k, choice.pattern)
    assert reached == pytest.approx(1.0) and choice.cost == pytest.approx(cost)
    sparse = search_head(q[None], k[None], None, 0.5, GRID, LENGTH)
    assert not sparse.dense and sparse.cost < choice.cost  # the same head, a reachable bar


def test_a_layer_searches_each_query_head_against_its_shared_key_head() -> None:
    (q_a, k_a), (q_v, k_v) = a_shape_head(), vertical_slash_head()
    q = torch.stack([q_a, q_a, q_v, q_v])[None]
    k = torch.stack([k_a, k_v])[None]  # two query heads per key/value head
    choices = search_layer(q, k, None, TARGET, MARGIN, GRID)
    assert [_budgets(c.pattern) for c in choices] == [PLANTED[0][1]] * 2 + [PLANTED[1][1]] * 2
    measured = measure_layer(q, k, [c.pattern for c in choices])
    assert [m.recall for m in measured] == pytest.approx([c.recall for c in choices])


def test_searched_heads_make_a_configuration_that_round_trips(tmp_path: Path) -> None:
    q = torch.stack([f()[0] for f, _, _ in PLANTED])[None]
    k = torch.stack([f()[1] for f, _, _ in PLANTED])[None]
    layer = search_layer(q, k, None, TARGET, MARGIN, GRID)
    config = SparsePrefillConfig(
        model="planted",
        recall_target=TARGET,
        search_tokens=LENGTH,
        search_prompts=1,
        layers=[[c.pattern for c in layer]] * 2,
        recall=[[c.recall for c in layer]] * 2,
    )
    assert {p.pattern for p in config.layers[0]} == set(SparsePattern)
    path = tmp_path / "planted.json"
    config.save(path)
    assert SparsePrefillConfig.load(path) == config


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (
            lambda: search_layer(torch.zeros(2, 1, 8, 4), torch.zeros(1, 1, 8, 4)),
            "same search prompts",
        ),
        (
            lambda: search_layer(torch.zeros(1, 1, 8, 4), torch.zeros(1, 1, 8, 4), target=0),
            "target must be in",
        ),
        (lambda: SearchGrid(windows=()), "windows must hold at least one budget"),
        (
            lambda: measure_layer(torch.zeros(1, 2, 8, 4), torch.zeros(1, 1, 8, 4), []),
            "one pattern per query head",
        ),
    ],
)
def test_a_search_it_cannot_run_says_why(call: Callable[[], object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        call()
