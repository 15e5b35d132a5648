"""The package's user-facing error type (bottom layer: imports nothing from dpcdvae).

Library code raises :class:`DPCDVAEError` for a mistake the user can fix; ``dpcdvae.cli.main`` prints
its message as ``dpcdvae: error: <message>`` on one line (the traceback only with ``--debug``).
"""

from __future__ import annotations

__all__ = ["DPCDVAEError", "one_line", "missing_dependency_message"]


class DPCDVAEError(Exception):
    """An error with a one-line message for the user (printed without a traceback)."""


# import name -> pip package, where they differ
_PIP_NAMES = {"yaml": "pyyaml", "pytorch_lightning": "pytorch-lightning", "torch_geometric": "torch-geometric",
              "sklearn": "scikit-learn", "PIL": "pillow"}
# packages of the `chem` extra (pyproject.toml)
_CHEM = ("pymatgen", "matminer", "smact", "ase", "chgnet", "pandas", "matplotlib")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (its lines joined with '; '; the type name if empty)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return "; ".join(lines) or type(err).__name__


def missing_dependency_message(err: ModuleNotFoundError, what: str) -> str:
    """One line saying which package ``what`` (e.g. ``dpcdvae evaluate``) needs and how to install it."""
    top = (err.name or "").split(".")[0]
    if not top:
        return f"{what}: {one_line(err)}"
    if top == "dpcdvae":
        return f"{what} is unavailable: module {err.name} is missing from this dpcdvae install (reinstall it)"
    pkg = _PIP_NAMES.get(top, top)
    extra = " (or pip install 'dpcdvae[chem]')" if pkg in _CHEM else ""
    return f"{what} needs the Python package {pkg!r}, which is not installed: pip install {pkg}{extra}"
