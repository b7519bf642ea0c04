"""The scheduler's limits, named and meant as in the Triton config `mlpdeploy package` writes."""

from __future__ import annotations

from dataclasses import dataclass

from mlpdeploy.errors import MlpdeployError

DEFAULT_PREFIX_CACHE_MB = 128
PREFILL_MODES = ("auto", "fused", "separate")
DEFAULT_COLUMNS = 2048  # the default cache budget: this many tokens per row (or the model's context, if shorter)


@dataclass
class SchedulerOptions:
    """`max_batch`: sequences generating at once (rows of one decode step; Triton's
    `max_batch_size`). `max_queue_delay_us`: how long an idle scheduler waits for more requests
    before it starts (Triton's `max_queue_delay_microseconds`). `max_cache_tokens`: the cache
    budget — prompt + max_tokens summed over the sequences admitted at once (None: max_batch ×
    min(context, 2048)); a request that does not fit waits, one that could never fit is refused.
    `max_queue_size`: requests waiting beyond the batch and the budget (0: no limit; Triton's
    `default_queue_policy.max_queue_size`), more are refused with "Exceeds maximum queue size".
    `prefill_stall`: while other sequences decode, a prompt is prefilled in chunks that each take
    about this many of their decode steps' time, `smallest_chunk` tokens at least
    (`prefill.ChunkPolicy`); `prefill_chunk` fixes the chunk (tokens) instead. `prefix_cache_mb`:
    finished prompts' caches kept, MiB at most, so that a prompt sharing a prefix with one of them
    prefills only the rest (`prefix.PrefixCache`; 0: none kept). `copy_step_bytes`: while others
    decode, a copy of cache columns between rows goes at most this many bytes a step — a prefilled
    prompt going into its batch row (`joining.Joining`), the last row moving into the place of one
    that left (`Slots.leave`); SmolLM2-135M: 46 KB a token, 8 MiB ≈ 180 tokens ≈ 4 ms. `prefill`:
    "fused" runs each prompt chunk inside the others' decode step (builds that take ragged steps:
    `--ort-kernels` with CachedAttention), "separate" as a step of its own between theirs, "auto"
    fused where the build allows."""

    max_batch: int = 16
    max_queue_delay_us: int = 100
    max_cache_tokens: int | None = None
    max_queue_size: int = 0
    prefill_stall: float = 1.0
    prefill_chunk: int | None = None
    smallest_chunk: int = 4
    prefix_cache_mb: int = DEFAULT_PREFIX_CACHE_MB
    copy_step_bytes: int = 8 << 20
    prefill: str = "auto"

    def __post_init__(self):
        if self.max_batch < 1:
            raise MlpdeployError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_queue_delay_us < 0 or self.max_queue_size < 0:
            raise MlpdeployError("max_queue_delay_us and max_queue_size must be 0 or more")
        if self.max_cache_tokens is not None and self.max_cache_tokens < 2:
            raise MlpdeployError(f"max_cache_tokens must be at least 2 (a one-token prompt and one new token), got {self.max_cache_tokens}")
        if self.prefill_stall <= 0:
            raise MlpdeployError(f"the prefill stall (--prefill-stall) must be positive, got {self.prefill_stall}")
        if self.smallest_chunk < 1:
            raise MlpdeployError(f"prefill chunks (--prefill-min-chunk) take at least 1 token, got {self.smallest_chunk}")
        if self.prefix_cache_mb < 0:
            raise MlpdeployError(f"the prefix cache (--prefix-cache-mb) takes 0 MiB (off) or more, got {self.prefix_cache_mb}")
        if self.copy_step_bytes < 1:
            raise MlpdeployError(f"copy_step_bytes must be at least 1, got {self.copy_step_bytes}")
        if self.prefill not in PREFILL_MODES:
            raise MlpdeployError(f"prefill is one of {', '.join(PREFILL_MODES)}, got {self.prefill!r}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise MlpdeployError(f"a fixed prefill chunk (prefill_chunk) takes at least 1 token, got {self.prefill_chunk}")

    def fused(self, ragged: bool, build: str) -> bool:
        """Whether prompts prefill inside the decode step, for a build that takes ragged steps or not."""
        if self.prefill == "fused" and not ragged:
            raise MlpdeployError(f"{build} takes no ragged steps, which fused prefill needs; rebuild it with --ort-kernels "
                                 "(CachedAttention) or use --prefill separate")
        return ragged and self.prefill != "separate"

    def budget(self, context: int) -> int:
        """The cache budget in tokens for a model of `context` positions."""
        return self.max_cache_tokens if self.max_cache_tokens is not None else self.max_batch * min(context, DEFAULT_COLUMNS)
