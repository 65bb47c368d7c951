"""Empirical distributions: the only kind of distribution a PDGraph holds.

Hermes keeps *samples* of every quantity (tokens, fan-out, seconds, loop counts) rather than a
fitted parametric law: the samples are what was observed, they are cheap to refit from a sliding
window, and Monte-Carlo over them needs no distributional assumption.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator


class Empirical(BaseModel):
    """Equally likely observed values of one non-negative quantity.

    `sample` draws with replacement (the bootstrap), so a distribution of 10 traced values
    produces only those 10 values; that is deliberate: the scheduler must not invent sizes
    that were never seen.
    """

    model_config = ConfigDict(extra="forbid")

    samples: Annotated[tuple[float, ...], Field(min_length=1)]
    unit: str = ""

    _values: np.ndarray = PrivateAttr()

    @field_validator("samples")
    @classmethod
    def _finite_non_negative(cls, samples: tuple[float, ...]) -> tuple[float, ...]:
        for i, value in enumerate(samples):
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"sample #{i} is {value!r}; samples must be finite and >= 0 "
                    "(drop failed or unmeasured observations before loading)"
                )
        return samples

    def model_post_init(self, _context: object) -> None:
        self._values = np.asarray(self.samples, dtype=np.float64)
        self._values.setflags(write=False)

    def __eq__(self, other: object) -> bool:
        """Equal when the samples and unit are; the cached array is derived, not compared."""
        if not isinstance(other, Empirical):
            return NotImplemented
        return self.samples == other.samples and self.unit == other.unit

    __hash__ = None  # mutable-model semantics, like pydantic's default

    @classmethod
    def of(cls, values: object, unit: str = "") -> Empirical:
        """Build from any 1-D sequence of numbers."""
        return cls(samples=tuple(float(v) for v in np.asarray(values, dtype=float).ravel()), unit=unit)

    @property
    def values(self) -> np.ndarray:
        """The samples as a read-only float64 array."""
        return self._values

    @property
    def mean(self) -> float:
        return float(self._values.mean())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` draws with replacement."""
        return self._values[rng.integers(0, self._values.size, size=size)]

    def quantile(self, q: float) -> float:
        return float(np.quantile(self._values, q))
