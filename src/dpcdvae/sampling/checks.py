"""Up-front checks of the sampling arguments (one-line errors before anything is loaded or written)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_device", "check_sample_args", "visible_cuda_devices"]


def _count(flag: str, value, minimum: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}")


def visible_cuda_devices() -> int:
    """Number of visible CUDA devices; a one-line ValueError when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.cuda.device_count()


def check_device(device: str) -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda``, ``cuda:N`` of a visible GPU (or ``mps``)."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = visible_cuda_devices()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"--device {device!r} is not supported: use auto, cpu, cuda or cuda:N")


def check_sample_args(out: Path | str, n: int | None = None, batch_size: int | None = None,
                      steps: int | None = None, rank: int = 0, world_size: int = 1,
                      limit: int | None = None, start: int | None = None) -> None:
    """Refuse bad ``sample`` / ``reconstruct`` arguments (ValueError / NotADirectoryError); the
    device is checked by :func:`dpcdvae.sampling.run.resolve_device` (:func:`check_device`)."""
    _count("-n", n)
    _count("--batch-size", batch_size)
    _count("--steps", steps)
    _count("--limit", limit)
    _count("--start", start, minimum=0)
    _count("--world-size", world_size)
    _count("--rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"--rank must be < --world-size (ranks are 0..{world_size - 1}), got --rank {rank}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out")
