"""The GPUs this process could run an engine on."""

from __future__ import annotations

import shutil
import subprocess


def visible_gpus() -> list[dict[str, str]]:
    """GPUs this process could run an engine on: name and compute capability (e.g. sm89)."""
    try:
        import torch

        if torch.cuda.is_available():
            return [
                {"name": torch.cuda.get_device_name(i), "sm": "sm%d%d" % torch.cuda.get_device_capability(i)}
                for i in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken CUDA install is the same as no GPU here
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, _, cap = line.rpartition(",")
        if name and cap.strip():
            gpus.append({"name": name.strip(), "sm": "sm" + cap.strip().replace(".", "")})
    return gpus
