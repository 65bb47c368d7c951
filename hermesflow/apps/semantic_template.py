"""Prompt templates of semantic functions: `{{name}}` slots in, one typed output slot out.

As in Parrot (PAPERS.md §2), a template is the prompt with its Semantic Variables marked: every
slot that names a parameter of the function is an input, the one slot that does not is the
output, and it comes last — the model writes it after the prompt, so the prompt sent is the text
before the output slot. The static text before the first slot is the template's *prefix*: every
request of the function starts with it, which is what lets a backend share its KV cache.

Values are written into slots as text (a list one `- item` line per element, a dict as JSON),
and the model's reply is read back as the output's declared type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, get_args

SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""A slot: a Python identifier in double braces, spaces allowed inside the braces."""

REPLY_CLIP_CHARS = 120
"""How much of an unreadable reply an error message quotes."""


class ProgramDefinitionError(ValueError):
    """A Semantic-Variable program (or one of its functions) is malformed; raised while it is
    defined, never while it runs. The message names the function or node and the fix."""


@dataclass(frozen=True)
class Template:
    """A parsed template: its text, its input slots (in order of appearance) and its output."""

    text: str
    inputs: tuple[str, ...]
    output: str

    @classmethod
    def parse(cls, text: str, params: Collection[str], where: str) -> Template:
        """Check `text` against the function's parameter names (module docstring); `where`
        names the function in errors."""
        matches = list(SLOT.finditer(text))
        stray = SLOT.sub("", text)
        if "{{" in stray or "}}" in stray:
            raise ProgramDefinitionError(
                f"{where}: the template has a malformed slot; write slots as {{{{name}}}} with a "
                "Python identifier inside"
            )
        slots = [match.group(1) for match in matches]
        if not matches or matches[-1].group(1) in params:
            raise ProgramDefinitionError(
                f"{where}: the template does not end with an output slot; end it with a slot that "
                "names the output and is no parameter, e.g. 'Answer: {{answer}}'"
            )
        output = slots[-1]
        for slot in slots[:-1]:
            if slot not in params:
                raise ProgramDefinitionError(
                    f"{where}: template slot {{{{{slot}}}}} has no input; add a parameter named "
                    f"{slot!r} or fix the slot (only the last slot, the output, has no parameter)"
                )
        tail = text[matches[-1].end() :].strip()
        if tail:
            raise ProgramDefinitionError(
                f"{where}: text after the output slot {{{{{output}}}}} is never sent to the "
                f"model ({tail[:40]!r}); end the template with the output slot"
            )
        unused = [p for p in params if p not in slots]
        if unused:
            raise ProgramDefinitionError(
                f"{where}: parameter(s) {unused} are not used by the template; add a slot "
                f"{{{{{unused[0]}}}}} or remove the parameter"
            )
        return cls(text=text, inputs=tuple(dict.fromkeys(slots[:-1])), output=output)

    @property
    def prefix(self) -> str | None:
        """The static text before the first slot (None when the template starts with one)."""
        return self.text[: SLOT.search(self.text).start()] or None

    def prompt(self, values: Mapping[str, Any]) -> str:
        """The prompt sent to the model: the text before the output slot, inputs filled in,
        without trailing spaces — BPE tokenizers fold a word's leading space into its token, so
        a prompt ending in a space makes the model start its reply mid-token."""
        before = self.text[: list(SLOT.finditer(self.text))[-1].start()]
        return SLOT.sub(lambda m: render_value(values[m.group(1)]), before).rstrip(" \t")


def render_value(value: Any) -> str:
    """A value as slot text: strings as they are, lists one `- item` line per element, dicts as
    JSON, anything else by `str`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "\n".join(f"- {render_value(item)}" for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# -- reading replies ----------------------------------------------------------------------------

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_BOOL = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


class UnreadableReply(ValueError):
    """The model's reply does not contain a value of the output's type."""


def _first(pattern: re.Pattern[str], convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        match = pattern.search(text)
        if match is None:
            raise UnreadableReply
        return convert(match.group(0))

    return read


def _read_lines(text: str) -> list[str]:
    return [item for line in text.splitlines() if (item := _BULLET.sub("", line).strip())]


def _read_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UnreadableReply
    return value


READERS: Mapping[Any, Callable[[str], Any]] = {
    str: str.strip,
    int: _first(_INT, int),
    float: _first(_FLOAT, float),
    bool: _first(_BOOL, lambda word: word.lower() in ("yes", "true")),
    list[str]: _read_lines,
    dict: _read_object,
    dict[str, Any]: _read_object,
}
"""Output types a semantic function may declare → how its value is read from the reply: the
text itself; the first integer, number or yes/no/true/false in it; its non-empty lines (bullets
and numbering removed); the JSON object in it."""


def reader_for(output_type: Any, where: str) -> Callable[[str], Any]:
    """The reader of a declared output type; an unsupported type fails the definition."""
    try:
        return READERS[output_type]
    except (KeyError, TypeError):
        names = ", ".join(_type_name(t) for t in READERS)
        raise ProgramDefinitionError(
            f"{where}: the output type {_type_name(output_type)} cannot be read from a model's "
            f"reply; annotate the return as one of: {names}"
        ) from None


def read_reply(text: str, output_type: Any, where: str) -> Any:
    """The value of `output_type` in the model's reply `text`; names `where` when there is none."""
    try:
        return reader_for(output_type, where)(text)
    except UnreadableReply:
        quoted = text.strip()[:REPLY_CLIP_CHARS]
        raise UnreadableReply(
            f"{where}: no {_type_name(output_type)} in the model's reply {quoted!r}; say in the "
            "template what to write (e.g. 'Answer with a number.') or declare the output as str"
        ) from None


def _type_name(annotation: Any) -> str:
    return (
        str(annotation)
        if get_args(annotation)
        else getattr(annotation, "__name__", str(annotation))
    )
