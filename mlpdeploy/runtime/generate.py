"""Token generation with a KV cache: prefill once, then one token per step, the cache carried over.

Works on any artifact exported with `--kv-cache` (its manifest says which layers keep a cache).
Prompts of different lengths are left-padded. Through IO binding, the cache never goes through
numpy: when the build made the cache shareable (`CacheLayout.shared_buffer`, GroupQueryAttention
graphs), each layer's cache is one buffer preallocated for the whole generation and bound as both
past and present, so ONNX Runtime appends in place; otherwise each step binds the previous
step's present `OrtValue`s as the next step's past.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpdeploy.dtypes import numpy_dtype
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine


@dataclass
class Sampling:
    """Greedy when `temperature` is 0; else softmax(logits / temperature) restricted to the
    `top_k` most likely tokens (0: all) and the smallest set whose probability reaches `top_p`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise MlpdeployError(
                f"sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got {self.temperature}, {self.top_k}, {self.top_p}"
            )

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One token per row of `logits` [batch, vocab]."""
        if self.temperature == 0:
            return logits.argmax(-1)
        scaled = logits.astype(np.float64) / self.temperature
        if self.top_k:
            kth = np.sort(scaled, axis=-1)[:, -min(self.top_k, scaled.shape[-1])][:, None]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if self.top_p < 1:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, -1)
            keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < self.top_p  # always keeps the first
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(-1, keepdims=True)
        return np.array([rng.choice(len(p), p=p) for p in probs])


@dataclass
class Generation:
    """New tokens per prompt (a stop token included when one ended it), and the timings."""

    tokens: list[list[int]]
    finish: list[str]  # "stop" | "length"
    prefill_seconds: float
    step_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0  # wall time from the prefill's start to the last token

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: one-token steps per second of step time (None when no step ran: one token)."""
        steps = sum(self.step_seconds)
        return len(self.step_seconds) / steps if steps else None

    @property
    def overall_tokens_per_second(self) -> float | None:
        """Generated tokens (the longest row) over prefill + decode wall time."""
        generated = max((len(t) for t in self.tokens), default=0)
        return generated / self.total_seconds if self.total_seconds > 0 and generated else None


@dataclass
class DecodeState:
    """Where a generation stands: the attention mask so far and the cache (`OrtValue`s or arrays).

    The mask lives in a buffer sized for the whole generation (`mask` is a view of its first
    `length` columns) and the next positions are kept per row, so a step does no O(context) work in
    Python. With a shared cache buffer the IO binding is kept from step to step (the cache is bound
    once), and decode steps write their logits into one preallocated array."""

    mask_buffer: np.ndarray  # [batch, prompt + new tokens] int64
    length: int  # columns of mask_buffer in use
    past: dict
    next_positions: np.ndarray | None = None  # [batch, 1] int64: each row's position for the next token
    binding: Any = None
    step_logits: np.ndarray | None = None  # [batch, 1, vocab], bound as the output of one-token steps

    @property
    def mask(self) -> np.ndarray:
        """The attention mask so far [batch, length] (contiguous: a view for batch 1, else a copy)."""
        return np.ascontiguousarray(self.mask_buffer[:, : self.length])


class CachedGenerator:
    """Generates with an `Engine` whose artifact carries a KV cache."""

    def __init__(self, engine: Engine):
        if engine.cache is None:
            raise MlpdeployError(f"{engine.path} has no KV cache; export or compile the decoder with --kv-cache to generate")
        if engine.session is None:
            raise MlpdeployError(f"{engine.path} runs in {engine.runtime}; generation drives the cache through ONNX Runtime's IO binding — serve the .onnx build")
        self.engine, self.layout = engine, engine.cache
        self.past_names = [n for layer in self.layout.layers for n in self.layout.input_names(layer)]
        self.present_names = [n for layer in self.layout.layers for n in self.layout.output_names(layer)]
        # present name -> past name: with a shared buffer each layer's present is its past, appended in place
        self.shared = dict(zip(self.present_names, self.past_names)) if self.layout.shared_buffer else {}
        # one-token steps write float32 logits of a fixed vocabulary into a preallocated array
        logits = engine.session.get_outputs()[engine.output_names.index("logits")]
        fixed = self.layout.shared_buffer and isinstance(logits.shape[-1], int) and logits.type == "tensor(float)"
        self.step_vocab = logits.shape[-1] if fixed else None

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling | None = None,
        stop_tokens: Sequence[int] = (),
        on_token: Callable[[int, int], None] | None = None,
        pad_token: int = 0,
    ) -> Generation:
        """Generate up to `max_new_tokens` for each prompt; `on_token(prompt index, token)` streams them."""
        sampling = sampling or Sampling()
        rng = np.random.default_rng(sampling.seed)
        batch = len(prompts)
        tokens: list[list[int]] = [[] for _ in prompts]
        finish = ["length"] * batch
        done = np.zeros(batch, bool)
        start = began = time.perf_counter()
        logits, state = self.prefill(prompts, max_new_tokens, pad_token)
        result = Generation(tokens, finish, prefill_seconds=time.perf_counter() - start)
        for step in range(max_new_tokens):
            next_ids = sampling.pick(logits, rng)
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                tokens[row].append(token)
                if on_token is not None:
                    on_token(row, token)
                if token in stop_tokens:
                    done[row], finish[row] = True, "stop"
            if done.all() or step == max_new_tokens - 1:
                break
            start = time.perf_counter()
            logits = self.advance(state, next_ids)
            result.step_seconds.append(time.perf_counter() - start)
        result.total_seconds = time.perf_counter() - began
        return result

    def prefill(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token: int = 0) -> tuple[np.ndarray, DecodeState]:
        """Run the (left-padded) prompts with an empty cache sized for `max_new_tokens` more;
        the logits of each prompt's last token [batch, vocab] and the state to continue from."""
        self.check(prompts, max_new_tokens)
        batch, longest = len(prompts), max(len(p) for p in prompts)
        ids = np.full((batch, longest), pad_token, np.int64)
        mask = np.zeros((batch, longest + max_new_tokens), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt):] = prompt
            mask[row, longest - len(prompt):] = 1  # the new tokens' columns too: they are only read once in use
        state = DecodeState(mask, longest, self._cache(batch, longest + max_new_tokens))
        return self._step(ids, state)[:, -1], state

    def advance(self, state: DecodeState, next_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row [batch]; the next logits [batch, vocab]."""
        if state.length >= state.mask_buffer.shape[1]:
            raise MlpdeployError(f"the generation was prefilled for {state.mask_buffer.shape[1]} positions and has used them all")
        state.length += 1
        return self._step(np.asarray(next_ids, np.int64)[:, None], state)[:, -1]

    def check(self, prompts, max_new_tokens: int) -> None:
        """A one-line error if the prompts or `max_new_tokens` do not fit the model."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise MlpdeployError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise MlpdeployError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.layout.max_positions:
            raise MlpdeployError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new ones exceeds the model's {self.layout.max_positions} "
                "positions; shorten the prompt or ask for fewer tokens"
            )

    def _cache(self, batch: int, length: int) -> dict:
        """The cache to start from: shared buffers of `length` positions, else empty arrays."""
        import onnxruntime as ort

        dtype = numpy_dtype(self.layout.dtype)
        if self.layout.shared_buffer:
            shape = (batch, self.layout.kv_heads, length, self.layout.head_dim)
            return {name: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype)) for name in self.past_names}
        empty = np.zeros((batch, self.layout.kv_heads, 0, self.layout.head_dim), dtype)
        return {name: empty for name in self.past_names}

    def _step(self, ids: np.ndarray, state: DecodeState) -> np.ndarray:
        """One run: this step's tokens and the whole mask in; logits out, the state's cache grown."""
        session, mask, past, shared = self.engine.session, state.mask, state.past, self.shared
        binding = state.binding
        if binding is None:
            binding = session.io_binding()
            for name, value in past.items():
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:
                    binding.bind_ortvalue_input(name, value)
            for name in self.engine.output_names:  # in order: get_outputs() lists them as first bound
                if name in shared:
                    binding.bind_ortvalue_output(name, past[shared[name]])  # appended in place
                else:
                    binding.bind_output(name, "cpu")
            if shared:
                state.binding = binding  # the cache stays bound: later steps rebind only what changes
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids))
        binding.bind_cpu_input("attention_mask", mask)
        if self.layout.position_ids:
            if ids.shape[1] == 1 and state.next_positions is not None:
                positions = state.next_positions
            else:  # a prompt: positions count its tokens, pads at 0
                positions = np.ascontiguousarray(np.maximum(mask.cumsum(-1) - 1, 0)[:, -ids.shape[1]:])
            binding.bind_cpu_input("position_ids", positions)
            state.next_positions = positions[:, -1:] + 1
        preallocated = self.step_vocab is not None and ids.shape[1] == 1
        if preallocated and state.step_logits is None:
            import onnxruntime as ort

            state.step_logits = np.empty((ids.shape[0], 1, self.step_vocab), np.float32)
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(state.step_logits))
        for name in self.engine.output_names:
            if name not in shared and not (name == "logits" and preallocated):
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        if preallocated:
            return state.step_logits.copy()
        outputs = dict(zip(self.engine.output_names, binding.get_outputs()))
        if not shared:
            state.past = {p: outputs[o] for p, o in zip(self.past_names, self.present_names)}
        return outputs["logits"].numpy()
