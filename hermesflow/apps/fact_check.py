"""Fact-check chain (`fact_check`): extract claims, search evidence per claim, judge each claim.

    extract_claims (llm) ─▶ search_evidence (search, one call per claim)
                        ─▶ judge_claims (llm, one call per claim) ─▶ END

The number of claims is the fan-out of both later stages. The model lists the claims, one per
line (a line holding several sentences is several claims); a claim is kept only if it is a claim
*of this text* (at least three words, and at least half of its content words occur in the
text), so a model that rambles or invents cannot grow the fan-out. When no
line survives, the text's sentences are the claims. The smallest class of the suite: one short
extraction and a handful of one-word verdicts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hermesflow.apps.program import AppProgram, Finished, ProgramState, StepPlan, Transition
from hermesflow.apps.suite_data import ClaimSet, claim_sets, corpus
from hermesflow.apps.suite_steps import (
    SEARCH_BACKEND,
    SEARCH_EXEC_S,
    chat,
    check_results,
    clip,
    counts_prior,
    expect_inputs,
    generated_text,
    input_tokens_prior,
    llm_stage,
    search_call,
    search_hits,
    split_sentences,
    tool_observation,
    tool_stage,
    unknown_stage,
)
from hermesflow.backends.calls import CallResult, LLMCall
from hermesflow.pdgraph.model import END, LLM_BACKEND, PDGraph, StageKind

EXTRACT = "extract_claims"
SEARCH = "search_evidence"
JUDGE = "judge_claims"

MAX_TEXT_CHARS = 2000
MAX_CLAIMS_LIMIT = 8
EXTRACT_MAX_TOKENS = 48
JUDGE_MAX_TOKENS = 8
"""A verdict is one word; the cap leaves room for a short preamble."""
EVIDENCE_K = 2
EVIDENCE_MAX_CHARS = 320
MIN_CLAIM_WORDS = 3
MIN_CLAIM_OVERLAP = 0.5
"""Share of a listed claim's content words that must occur in the text."""

EXTRACT_SYSTEM = "You list the factual claims of a text."
JUDGE_SYSTEM = "You check a claim against evidence. Answer True or False."

TRUE, FALSE, UNKNOWN = "true", "false", "unknown"
_VERDICT_WORDS = {
    "true": TRUE,
    "supported": TRUE,
    "correct": TRUE,
    "yes": TRUE,
    "false": FALSE,
    "refuted": FALSE,
    "incorrect": FALSE,
    "no": FALSE,
}
_VERDICT = re.compile(r"\b(" + "|".join(_VERDICT_WORDS) + r")\b", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\d+\s*[.):]|claim\s*\d*\s*[:.)-])\s*", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")


class FactCheckInputs(BaseModel):
    """A short text to check; at most `max_claims` of its claims are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    max_claims: Annotated[int, Field(ge=1, le=MAX_CLAIMS_LIMIT)] = 4

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the text to fact-check is blank; give one or more sentences")
        return text.strip()


def extract_call(text: str) -> LLMCall:
    return chat(
        EXTRACT_SYSTEM,
        f"List each factual claim in this text on its own line.\nText: {text}",
        EXTRACT_MAX_TOKENS,
    )


def judge_call(claim: str, evidence: str) -> LLMCall:
    return chat(
        JUDGE_SYSTEM,
        f"Evidence:\n{evidence}\nClaim: {claim}\nIs the claim true? Answer True or False.",
        JUDGE_MAX_TOKENS,
    )


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 4 or w.isdigit()]


def parse_claims(output: str, text: str, max_claims: int) -> tuple[list[str], str]:
    """The claims to check and where they came from ("model" or "sentences")."""
    vocabulary = set(_WORD.findall(text.lower()))
    claims: list[str] = []
    seen: set[str] = set()
    lines = (_LIST_MARKER.sub("", line).strip().strip("\"'") for line in output.splitlines())
    for claim in (sentence for line in lines for sentence in split_sentences(line)):
        content = _content_words(claim)
        if len(claim.split()) < MIN_CLAIM_WORDS or not content:
            continue
        if sum(w in vocabulary for w in content) < MIN_CLAIM_OVERLAP * len(content):
            continue
        if claim.lower() not in seen:
            seen.add(claim.lower())
            claims.append(claim)
    if claims:
        return claims[:max_claims], "model"
    return (split_sentences(text) or [text])[:max_claims], "sentences"


def parse_verdict(output: str) -> str:
    found = _VERDICT.search(output)
    return _VERDICT_WORDS[found.group(1).lower()] if found else UNKNOWN


class FactCheckChain(AppProgram):
    """Extract claims → search evidence per claim → judge each claim (module docstring)."""

    app_class: ClassVar[str] = "fact_check"
    Inputs: ClassVar[type[BaseModel]] = FactCheckInputs

    def start(self, inputs: BaseModel) -> Transition:
        own = expect_inputs(inputs, FactCheckInputs, self.app_class)
        return Transition(
            state={},
            next=StepPlan(stage=EXTRACT, backend=LLM_BACKEND, calls=[extract_call(own.text)]),
        )

    def advance(
        self, inputs: BaseModel, state: ProgramState, step: StepPlan, results: list[CallResult]
    ) -> Transition:
        own = expect_inputs(inputs, FactCheckInputs, self.app_class)
        check_results(self.app_class, step, results)
        if step.stage == EXTRACT:
            claims, source = parse_claims(generated_text(results[0]), own.text, own.max_claims)
            calls = [search_call(claim, EVIDENCE_K) for claim in claims]
            return Transition(
                state={"claims": claims, "claims_from": source},
                next=StepPlan(stage=SEARCH, backend=SEARCH_BACKEND, calls=calls),
            )
        if step.stage == SEARCH:
            claims = state["claims"]
            evidence = [tool_observation(r, EVIDENCE_MAX_CHARS) for r in results]
            calls = [judge_call(c, e) for c, e in zip(claims, evidence, strict=True)]
            ids = [[hit["id"] for hit in search_hits(r)] for r in results]
            return Transition(
                state={**state, "evidence_ids": ids},
                next=StepPlan(stage=JUDGE, backend=LLM_BACKEND, calls=calls),
            )
        if step.stage == JUDGE:
            verdicts = [
                {"claim": claim, "verdict": parse_verdict(generated_text(r)), "evidence": ids}
                for claim, r, ids in zip(
                    state["claims"], results, state["evidence_ids"], strict=True
                )
            ]
            result: dict[str, Any] = {"claims": verdicts, "claims_from": state["claims_from"]}
            return Transition(state=state, next=Finished(result=result))
        raise unknown_stage(self.app_class, step.stage, (EXTRACT, SEARCH, JUDGE))

    def sample_inputs(self, rng: np.random.Generator) -> BaseModel:
        sets = claim_sets()
        return FactCheckInputs(text=sets[int(rng.integers(len(sets)))].text)

    def prior(self) -> PDGraph:
        """Sizes from the shipped texts: their claim counts are the fan-out, the evidence of a
        claim is its deciding corpus passage (what a good search returns first)."""
        sets: tuple[ClaimSet, ...] = claim_sets()
        default_max = FactCheckInputs.model_fields["max_claims"].default
        passages = {p.id: f"{p.title}: {p.text}" for p in corpus()}
        fanout = counts_prior((min(len(s.claims), default_max) for s in sets), unit="requests")
        judge_calls = [
            judge_call(
                c.text, clip("\n".join([passages[c.source]] * EVIDENCE_K), EVIDENCE_MAX_CHARS)
            )
            for s in sets
            for c in s.claims
        ]
        return PDGraph(
            name=self.app_class,
            entry={EXTRACT: 1.0},
            stages={
                EXTRACT: llm_stage(
                    {SEARCH: 1.0},
                    input_tokens_prior(extract_call(s.text) for s in sets),
                    EXTRACT_MAX_TOKENS,
                    short_reply=True,
                ),
                SEARCH: tool_stage(
                    StageKind.SEARCH, SEARCH_BACKEND, {JUDGE: 1.0}, SEARCH_EXEC_S, fanout=fanout
                ),
                JUDGE: llm_stage(
                    {END: 1.0},
                    input_tokens_prior(judge_calls),
                    JUDGE_MAX_TOKENS,
                    short_reply=True,
                    fanout=fanout,
                ),
            },
        )
