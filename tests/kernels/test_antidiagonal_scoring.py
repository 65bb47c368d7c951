"""XAttention's antidiagonal block scoring against a naive loop over each tile's antidiagonals:
causal masking, padding past the prompt, grouped-query heads, its errors, and the index it picks
where pooled scoring cannot see a block. Tiny shapes, CPU only."""

from __future__ import annotations

import math

import pytest
import torch

from hermesflow.kernels.sparse_estimate import (
    BlockScoring,
    antidiagonal_block_scores,
    estimate_block_sparse,
)

BATCH, Q_HEADS, KV_HEADS, DIM = 2, 2, 1, 8
BLOCK, STRIDE = 8, 4


def _qk(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, Q_HEADS, length, DIM, generator=generator)
    k = torch.randn(BATCH, KV_HEADS, length, DIM, generator=generator)
    return q, k


def _naive(q: torch.Tensor, k: torch.Tensor, block: int, stride: int, scale: float) -> torch.Tensor:
    """The definition, one scalar at a time: for query group `g` and key group `h <= g`, the mean
    of `q[a] . k[b] * scale` over the real positions of the antidiagonal `a + b = g S + h S + S - 1`
    of their `S` x `S` sub-tile; a softmax over each query group's key groups that have a real
    product; the softmax summed per tile; the conventions of `block_scores` on top."""
    batch, heads, length, _ = q.shape
    group = heads // k.shape[1]
    groups = -(-length // stride)
    count = -(-length // block)
    out = torch.zeros(batch, heads, count, count, dtype=torch.float64)
    for n in range(batch):
        for head in range(heads):
            key = k[n, head // group].double()
            query = q[n, head].double()
            for g in range(groups):
                logits: dict[int, float] = {}
                for h in range(g + 1):
                    pairs = [
                        (g * stride + j, h * stride + stride - 1 - j)
                        for j in range(stride)
                        if g * stride + j < length and h * stride + stride - 1 - j < length
                    ]
                    if pairs:
                        products = [float(query[a] @ key[b]) * scale for a, b in pairs]
                        logits[h] = sum(products) / len(products)
                if not logits:
                    continue
                top = max(logits.values())
                total = sum(math.exp(v - top) for v in logits.values())
                for h, value in logits.items():
                    tile = (g * stride // block, h * stride // block)
                    out[n, head, tile[0], tile[1]] += math.exp(value - top) / total
    for i in range(count):
        for j in range(count):
            if j > i:
                out[..., i, j] = float("-inf")
            elif j in (i, 0):
                out[..., i, j] = float("inf")
    return out.float()


@pytest.mark.parametrize("length", [40, 37, 35, 33, 3])
def test_scores_match_a_naive_loop_over_the_antidiagonals(length: int) -> None:
    """40 fills whole blocks; 37 and 35 end inside a group, 33 leaves a whole group of padding
    and a last group of one real query; 3 is one partial group."""
    q, k = _qk(length)
    got = antidiagonal_block_scores(q, k, BLOCK, STRIDE)
    assert got.dtype == torch.float32
    assert got.shape == (BATCH, Q_HEADS, -(-length // BLOCK), -(-length // BLOCK))
    torch.testing.assert_close(got, _naive(q, k, BLOCK, STRIDE, DIM**-0.5))


def test_an_explicit_scale_and_a_stride_equal_to_the_block() -> None:
    q, k = _qk(37, seed=1)
    got = antidiagonal_block_scores(q, k, BLOCK, BLOCK, scale=0.7)
    torch.testing.assert_close(got, _naive(q, k, BLOCK, BLOCK, 0.7))


def test_stride_one_scores_each_tile_by_its_exact_softmax_mass() -> None:
    """With one query per group the group logits are the attention logits: each tile's score is
    the causal softmax mass it holds, summed over its queries."""
    length = 37
    q, k = _qk(length, seed=2)
    logits = torch.einsum("bhqd,bkd->bhqk", q, k[:, 0]) * DIM**-0.5
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    weights = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    padded = torch.nn.functional.pad(weights, (0, 3, 0, 3))  # 40 = 5 blocks of 8
    mass = padded.reshape(BATCH, Q_HEADS, 5, BLOCK, 5, BLOCK).sum(dim=(3, 5))
    got = antidiagonal_block_scores(q, k, BLOCK, 1)
    below = torch.ones(5, 5, dtype=torch.bool).tril(diagonal=-1)
    below[:, 0] = False
    torch.testing.assert_close(got[..., below], mass[..., below])


def test_causal_masking_and_the_always_kept_tiles() -> None:
    q, k = _qk(40)
    got = antidiagonal_block_scores(q, k, BLOCK, STRIDE)
    later = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)
    assert bool((got[..., later] == float("-inf")).all())
    assert bool((got.diagonal(dim1=-2, dim2=-1) == float("inf")).all())
    assert bool((got[..., 0] == float("inf")).all())
    assert bool(got[..., 2:, 1:].tril(diagonal=-1).isfinite().all())


def test_a_query_block_s_scores_ignore_later_keys() -> None:
    """Keys from block 3 on change nothing in the rows of query blocks 0 to 2."""
    q, k = _qk(40)
    changed = k.clone()
    changed[:, :, 3 * BLOCK :] = torch.randn(BATCH, KV_HEADS, 40 - 3 * BLOCK, DIM) * 5
    before = antidiagonal_block_scores(q, k, BLOCK, STRIDE)
    after = antidiagonal_block_scores(q, changed, BLOCK, STRIDE)
    torch.testing.assert_close(after[..., :3, :], before[..., :3, :])
    assert not torch.equal(after[..., 3:, :3], before[..., 3:, :3])


def test_grouped_query_heads_share_their_key_head() -> None:
    """Two query heads on one key head score as they would on two copies of it, and differently
    from each other."""
    q, k = _qk(37)
    shared = antidiagonal_block_scores(q, k, BLOCK, STRIDE)
    copied = antidiagonal_block_scores(q, k.repeat_interleave(Q_HEADS, dim=1), BLOCK, STRIDE)
    torch.testing.assert_close(shared, copied)
    assert not torch.equal(shared[:, 0], shared[:, 1])


@pytest.mark.parametrize(
    ("block", "stride", "says"),
    [
        (8, 0, "stride must be at least 1"),
        (8, -4, "stride must be at least 1"),
        (8, 3, "divide block"),
        (8, 16, "divide block"),
        (0, 1, "block must be at least 1"),
    ],
)
def test_bad_block_or_stride_is_refused(block: int, stride: int, says: str) -> None:
    q, k = _qk(16)
    with pytest.raises(ValueError, match=says):
        antidiagonal_block_scores(q, k, block, stride)
    with pytest.raises(ValueError, match=says):
        estimate_block_sparse(q, k, block, 2, scoring=BlockScoring.ANTIDIAGONAL, stride=stride)


def test_antidiagonal_scoring_finds_a_block_that_pooling_averages_away() -> None:
    """Every query of block 3 shares a direction `u`. Key block 1 holds one key far along `u`
    and one far against it, which its mean cancels; key block 2's keys all lean a little along
    `u`. Block 1 holds more of block 3's attention (exactly: stride 1), pooled scoring prefers
    block 2, and the antidiagonals, whose groups of 4 keys keep the two keys apart, find block 1."""
    q, k = _qk(40)
    direction = torch.zeros(DIM)
    direction[0] = 1.0
    q, k = q.clone(), k.clone()
    q[:, :, 3 * BLOCK : 4 * BLOCK] += 4.0 * direction
    k[:, :, BLOCK + 2] += 8.0 * direction
    k[:, :, BLOCK + 5] -= 8.0 * direction
    k[:, :, 2 * BLOCK : 3 * BLOCK] += 1.0 * direction

    exact = antidiagonal_block_scores(q, k, BLOCK, 1)
    assert bool((exact[..., 3, 1] > exact[..., 3, 2]).all())
    antidiagonal = estimate_block_sparse(
        q, k, BLOCK, 3, scoring=BlockScoring.ANTIDIAGONAL, stride=STRIDE
    ).blocks
    pooled = estimate_block_sparse(q, k, BLOCK, 3).blocks
    assert bool(antidiagonal[..., 3, 1].all()), antidiagonal[0, 0]
    assert not bool(pooled[..., 3, 1].any()), pooled[0, 0]
    assert int(antidiagonal.sum(-1).max()) <= 3
    explicit = estimate_block_sparse(q, k, BLOCK, 3, scoring=BlockScoring.POOLED).blocks
    assert torch.equal(pooled, explicit)  # pooled stays the default
