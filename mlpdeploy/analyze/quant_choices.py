"""What a linear layer may become in a quantization plan, what that costs, and how it changes
the layer's output (the change `fisher.estimate_changes` weighs).

A `Choice` is a weight format at a MatMulNBits accuracy level, or float32 (left alone). On
ONNX Runtime (`ort`) every format is offered at the accuracy level its fast kernel runs at and,
for INT4, at both:

| format | level 0 (float32 activations) | level 4 (int8 activations, blocks of the format's block) |
|---|---|---|
| int4, int4asym (4-bit MatMulNBits) | offered | offered |
| int8 (8-bit MatMulNBits) | not offered (no fast kernel) | offered |
| nvfp4, mxfp4 (exact 8-bit MatMulNBits re-encoding) | not offered | offered |

With a budget the planner also offers `FALLBACK` (int8) at every layer, whatever `--quant` lists:
the step between a 4-bit format and float32 that makes a tight budget reachable with a model
still ~3.5x smaller (mixed precision).

FP4 at level 0 would be the W4A16MatMul function, which ONNX Runtime folds back into a float32
weight when the session is created: no memory or time saved, so the planner does not offer it.
On TensorRT (`trt`) activations stay float (level 0) and each format keeps its own bits.

Bytes are what `quantize-weights` stores for the choice (`planned_bytes`); level 4 costs the
same bytes as level 0 and runs faster (ENVIRONMENT.md: K 4096 × N 11008 at batch 1, 1.62 ms
against 4.00 ms), which is why the planner prefers it where the data says it is as good.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlpdeploy.passes.quantize_weights import planned_bytes
from mlpdeploy.quant import Format
from mlpdeploy.quant.torch_apply import dequantized_weight, int8_blocks

FLOAT_LEVEL = 0
FALLBACK = "int8"


@dataclass(frozen=True)
class Choice:
    """A linear's fate in a plan: `format` at MatMulNBits `level`, or float32 (format None)."""

    format: Format | None
    level: int = FLOAT_LEVEL

    def __str__(self) -> str:
        if self.format is None:
            return "float32"
        return f"{self.format}/L{self.level}"

    @property
    def int8_activations(self) -> bool:
        return self.format is not None and self.level == 4

    def bytes(self, k: int, n: int, target: str) -> int:
        """Bytes the [K, N] weight takes once `quantize-weights` writes it for `target`."""
        return 4 * k * n if self.format is None else planned_bytes(self.format, k, n, target, self.level)

    def site(self) -> dict:
        """The plan's `quantize-weights` site settings."""
        return {"format": str(self.format), "accuracy_level": self.level}


FLOAT32 = Choice(None)


def choices_for(formats: list[Format], target: str) -> list[Choice]:
    """Every quantized choice the planner may make for `formats` on `target` (see the table above)."""
    out = []
    for fmt in formats:
        if target != "ort":
            out.append(Choice(fmt, 0))
        elif fmt.fp4 or fmt.bits == 8:
            out.append(Choice(fmt, 4))
        else:
            out += [Choice(fmt, 0), Choice(fmt, 4)]
    return out


def output_changes(linear: torch.nn.Linear, choices: list[Choice], path: str) -> dict[str, object]:
    """{str(choice): Δy(x, y)} for `linear`: its output with the decoded weight (and int8 inputs at
    level 4) minus the float output y. Each format is quantized once, whatever its levels, and kept
    as the weight's change ΔW = Wq − W in bfloat16 (the change to 0.4%, half the memory; the proxy
    holds every layer's changes at once): Δy = x·ΔWᵀ, or at level 4 (x8 − x)·Wᵀ + x8·ΔWᵀ."""
    weight = linear.weight.detach()
    deltas = {fmt: (dequantized_weight(weight, fmt, f"{path}.weight").float() - weight.float()).to(torch.bfloat16)
              for fmt in {c.format for c in choices}}

    def change_for(choice: Choice):
        delta, block = deltas[choice.format], choice.format.block

        def change(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if not choice.int8_activations:
                return x @ delta.float().T
            rounded = int8_blocks(x, block)
            return (rounded - x) @ weight.float().T + rounded @ delta.float().T

        return change

    return {str(c): change_for(c) for c in choices}
