"""Rewrite passes, registered here one line each ("name": "module:Class")."""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "fuse-gated-mlp": "fuse_gated_mlp:FuseGatedMLP",
}
