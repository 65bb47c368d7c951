"""The `load_document` tool and the chunking behind it; the shipped data files."""

from __future__ import annotations

import json

import pytest

from hermesflow.apps.suite_data import claim_sets, code_tasks, corpus, documents, react_questions
from hermesflow.apps.tools import chunk_text, load_document


@pytest.mark.parametrize("doc", documents(), ids=lambda d: d.id)
def test_a_shipped_document_loads_as_one_chunk_per_paragraph(doc) -> None:
    loaded = load_document(doc.id)
    assert loaded["title"] == doc.title
    assert loaded["chunks"] == [" ".join(p.split()) for p in doc.text.split("\n\n")]
    json.dumps(loaded)


def test_shipped_documents_span_two_to_ten_chunks() -> None:
    counts = [len(load_document(doc.id)["chunks"]) for doc in documents()]
    assert len(counts) == 20 and min(counts) == 2 and max(counts) == 10


def test_an_unknown_document_names_the_known_ones_and_the_text_way() -> None:
    with pytest.raises(
        ValueError, match=r"no document 'nope'; known documents: .*caching.*pass it as 'text'"
    ):
        load_document("nope")


def test_a_long_paragraph_is_cut_between_sentences() -> None:
    sentences = [f"Sentence number {i} says something fairly ordinary." for i in range(30)]
    chunks = chunk_text(" ".join(sentences), max_chars=200)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 1
    assert " ".join(chunks) == " ".join(sentences)
    assert all(c.endswith(".") for c in chunks)


def test_an_overlong_sentence_is_cut_between_words_and_a_huge_word_itself() -> None:
    words = "word " * 100 + "x" * 250
    chunks = chunk_text(words, max_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(chunks).replace(" ", "") == words.replace(" ", "")


def test_a_short_paragraph_joins_the_chunk_before_it() -> None:
    text = "A paragraph long enough to stand on its own as a chunk of text, surely.\n\nShort one."
    assert chunk_text(text) == [
        "A paragraph long enough to stand on its own as a chunk of text, surely. Short one."
    ]
    assert chunk_text("Short one.\n\nAnother.") == ["Short one. Another."]


def test_whitespace_is_normalised_and_blank_text_has_no_chunks() -> None:
    assert chunk_text("  a   b\n c  ", min_chars=1) == ["a b c"]
    assert chunk_text(" \n\n \t ") == []


def test_chunk_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        chunk_text("text", max_chars=10, min_chars=20)


def test_shipped_inputs_are_well_formed() -> None:
    assert 150 <= len(corpus()) <= 300
    assert len(react_questions()) >= 30
    assert {tool for q in react_questions() for tool in q.tools} == {"search", "calculator"}
    assert len(code_tasks()) >= 20
    assert len(claim_sets()) >= 30
    assert {len(s.claims) for s in claim_sets()} == {1, 2, 3, 4}
    labels = [c.label for s in claim_sets() for c in s.claims]
    assert True in labels and False in labels
    passages = {p.id for p in corpus()}
    assert all(c.source in passages for s in claim_sets() for c in s.claims)
