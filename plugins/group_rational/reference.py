"""GroupRational's semantics as a torch function: the oracle every other face is tested against.

Channel c of x [..., C] belongs to group g = c // (C / G); with a = numerator[g or 0] and
b = denominator[g] (b[i-1] holds b_i):

    P(x) = a_0 + a_1 x + … + a_m x^m                         (Horner)
    form A:  Q(x) = 1 + Σ_{i=1..n} |b_i|·|x|^i                (KAT's CUDA and Triton kernels)
    form B:  Q(x) = 1 + |Σ_{i=1..n} b_i x^i|                   (KAT's coefficient-fitting script)
    y = P(x) / Q(x)

numerator is [1, m+1] (one numerator shared by every group, as KAT's `KAT_Group` does) or
[G, m+1] (one per group); denominator is [G, n]. Math runs in fp32 whatever the I/O dtype
(fp16/bf16 in and out), and the result is rounded once to x's dtype.

KAT's pure-torch helper (`Rational_CUDA_A_1DGroup` in rational_kat_cu's tests) computes a third
variant, Q(x) = 1 + Σ|b_i|·x^i with SIGNED powers, which differs from form A for x < 0 and
can reach zero; it is documented here and deliberately not offered.

Overflow: P and Q are evaluated as written, like KAT's kernels, so once |x|^m overflows fp32
(|x| beyond ~1e7 for m = 5 and coefficients of order 1e-2) the result is inf/inf = NaN in
every face alike.
"""

from __future__ import annotations

import torch

from mlpdeploy.errors import OpError

FORMS: tuple[str, ...] = ("A", "B")


def check_shapes(x_shape, numerator_shape, denominator_shape, form: str) -> tuple[int, int, int]:
    """(groups, m, n) for these shapes, or a one-line OpError saying what does not fit."""
    if form not in FORMS:
        raise OpError(f"unknown GroupRational form {form!r}; forms are A (1 + Σ|b_i||x|^i) and B (1 + |Σ b_i x^i|)")
    if len(denominator_shape) != 2 or denominator_shape[0] < 1 or denominator_shape[1] < 1:
        raise OpError(f"GroupRational denominator must be [groups, n] with n >= 1, got {tuple(denominator_shape)}")
    groups, n = int(denominator_shape[0]), int(denominator_shape[1])
    if len(numerator_shape) != 2 or numerator_shape[0] not in (1, groups) or numerator_shape[1] < 1:
        raise OpError(
            f"GroupRational numerator must be [1, m+1] (shared) or [{groups}, m+1] (per group), got {tuple(numerator_shape)}"
        )
    if not len(x_shape):
        raise OpError("GroupRational input must have at least one dim (channels last), got a scalar")
    channels = x_shape[-1]
    if isinstance(channels, int) and channels % groups:
        raise OpError(f"GroupRational input has {channels} channels, not divisible into {groups} groups")
    return groups, int(numerator_shape[1]) - 1, n


def horner(coefficients: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """c_0 + c_1 t + … + c_k t^k by Horner's rule (coefficients broadcast against t)."""
    acc = coefficients[-1] * torch.ones_like(t)
    for c in reversed(coefficients[:-1]):
        acc = acc * t + c
    return acc


def group_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str = "A") -> torch.Tensor:
    """The GroupRational op on torch tensors: x [..., C], numerator [1|G, m+1], denominator [G, n]."""
    groups, m, n = check_shapes(tuple(x.shape), tuple(numerator.shape), tuple(denominator.shape), form)
    xg = x.float().reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    a = [numerator[:, i : i + 1].float() for i in range(m + 1)]  # [1|G, 1]: broadcasts over the group's channels
    b = [denominator[:, i : i + 1].float() for i in range(n)]
    p = horner(a, xg)
    if form == "A":
        ax = xg.abs()
        q = 1.0 + horner([v.abs() for v in b], ax) * ax
    else:
        q = 1.0 + (horner(b, xg) * xg).abs()
    return (p / q).reshape(x.shape).to(x.dtype)


def group_rational_signed_powers(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """KAT's pure-torch variant, Q(x) = 1 + Σ|b_i|·x^i (signed powers): documented, NOT an op form.

    Kept so tests can show it differs from form A for negative inputs.
    """
    groups, m, n = check_shapes(tuple(x.shape), tuple(numerator.shape), tuple(denominator.shape), "A")
    xg = x.float().reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    p = horner([numerator[:, i : i + 1].float() for i in range(m + 1)], xg)
    q = 1.0 + horner([denominator[:, i : i + 1].float().abs() for i in range(n)], xg) * xg
    return (p / q).reshape(x.shape).to(x.dtype)
