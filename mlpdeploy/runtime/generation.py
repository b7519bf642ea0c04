"""What a generation loop returns (the plain loop in `generate` and the speculative one in
`speculative.loop` alike): a floor below both, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlpdeploy.runtime.ties import NearTie


@dataclass
class Generation:
    """New tokens per prompt (a stop token included when one ended it), and the timings.
    `step_seconds`: one entry per decode step (a verify round, with a drafter); `near_ties`: per
    row, the greedy tokens picked with a top-2 gap under the margin; `speculative`: the drafter's
    acceptance statistics (None for plain decoding)."""

    tokens: list[list[int]]
    finish: list[str]  # "stop" | "length"
    prefill_seconds: float
    step_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0  # wall time from the prefill's start to the last token
    near_ties: list[list[NearTie]] = field(default_factory=list)
    speculative: dict | None = None

    @property
    def decode_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first (the longest row) per second of step time (None when no step ran)."""
        steps = self.decode_seconds
        generated = max((len(t) for t in self.tokens), default=0)
        return (generated - 1) / steps if steps and generated > 1 else None

    @property
    def overall_tokens_per_second(self) -> float | None:
        """Generated tokens (the longest row) over prefill + decode wall time."""
        generated = max((len(t) for t in self.tokens), default=0)
        return generated / self.total_seconds if self.total_seconds > 0 and generated else None
