"""Fixed scale factors of GemNet-T (docs/GEMNET.md §5): constants, buffers, and auto-fitting.

A :class:`ScaleFactor` multiplies a tensor ``y`` by a fixed scalar ``s``. ``s`` lives in a persistent
fp32 buffer (so it is saved in the state dict, moved with the module and never trained) together
with a persistent bool buffer ``fitted``. The reference constants (``gemnet-dT.json``, tag
"tri_gaussian128") count as fitted. :func:`fit_scale_factors` fits the unfitted ones so that
``Var(s * y) = Var(ref)``, where Var is the per-column variance over rows averaged over columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["REFERENCE_SCALES", "ScaleFactor", "scale_factors", "fit_scale_factors"]

#: The reference constants (shared by CDVAE and DP-CDVAE; not refitted for A = 548).
REFERENCE_SCALES: dict[str, float] = {
    "TripInteraction_1_had_rbf": 18.873615,
    "TripInteraction_1_sum_cbf": 7.996850,
    "AtomUpdate_1_sum": 1.220464,
    "TripInteraction_2_had_rbf": 16.108175,
    "TripInteraction_2_sum_cbf": 7.614634,
    "AtomUpdate_2_sum": 0.969099,
    "TripInteraction_3_had_rbf": 15.019300,
    "TripInteraction_3_sum_cbf": 7.025180,
    "AtomUpdate_3_sum": 0.890324,
    "OutBlock_0_had": 16.161039,
    "OutBlock_1_had": 13.546787,
    "OutBlock_2_had": 12.754337,
    "OutBlock_3_had": 13.484952,
    "OutBlock_0_sum": 1.643785,
    "OutBlock_1_sum": 1.107765,
    "OutBlock_2_sum": 0.947793,
    "OutBlock_3_sum": 0.905925,
}

_Mode = Literal["apply", "observe", "one_pass"]


def _weighted_column_variance(x: Tensor, weight: Tensor | None) -> tuple[float, float]:
    """Per-column variance of x [rows, ...] over rows (rows weighted by ``weight`` [rows] if given),
    averaged over columns, in fp64. Returns (variance, total row weight)."""
    x = x.detach().reshape(x.shape[0], -1).double()
    if weight is None:
        n = float(x.shape[0])
        if n < 2:
            return 0.0, n
        return float(x.var(dim=0, unbiased=True).mean()), n
    w = weight.detach().double().reshape(-1, 1)
    n = float(w.sum())
    if n <= 1:
        return 0.0, n
    mean = (w * x).sum(0) / n
    var = (w * (x - mean) ** 2).sum(0) / (n - 1)
    return float(var.mean()), n


class ScaleFactor(nn.Module):
    """y -> s * y with a fixed scalar s (persistent buffers ``scale`` fp32 and ``fitted`` bool).

    Args:
        name: reference name (e.g. ``"TripInteraction_1_had_rbf"``).
        init: initial value; ``fitted`` says whether it counts as already fitted.
    """

    def __init__(self, name: str, init: float = 1.0, fitted: bool = False) -> None:
        super().__init__()
        self.name = name
        self.register_buffer("scale", torch.tensor(float(init), dtype=torch.float32))
        self.register_buffer("fitted", torch.tensor(bool(fitted)))
        self.mode: _Mode = "apply"
        self._stats = [0.0, 0.0, 0.0, 0.0]  # sum n_ref*var_ref, n_ref, sum n_out*var_out, n_out
        self._order_log: list[ScaleFactor] | None = None

    def forward(self, y: Tensor, ref: Tensor, ref_weight: Tensor | None = None) -> Tensor:
        """Scale ``y`` [rows, ...].

        Args:
            y: the tensor to scale.
            ref: the tensor whose variance ``s * y`` should match (only read while fitting).
            ref_weight: optional [rows of ref] multiplicities of ref's rows (e.g. how many triplets
                gather each edge), used only while fitting.
        """
        if self._order_log is not None:
            self._order_log.append(self)
        if self.mode == "one_pass":
            with torch.no_grad():
                v_ref, _ = _weighted_column_variance(ref, ref_weight)
                v_out, _ = _weighted_column_variance(y * self.scale, None)
                if v_ref > 0 and v_out > 0:
                    self.scale.mul_(math.sqrt(v_ref / v_out))
                    self.fitted.fill_(True)
            return y * self.scale
        out = y * self.scale
        if self.mode == "observe":
            v_ref, n_ref = _weighted_column_variance(ref, ref_weight)
            v_out, n_out = _weighted_column_variance(out, None)
            self._stats[0] += v_ref * n_ref
            self._stats[1] += n_ref
            self._stats[2] += v_out * n_out
            self._stats[3] += n_out
        return out

    def finish_observing(self) -> bool:
        """Set s <- s * sqrt(V_ref / V_out) from the observed statistics; returns success."""
        s_ref, n_ref, s_out, n_out = self._stats
        self._stats = [0.0, 0.0, 0.0, 0.0]
        self.mode = "apply"
        if n_ref <= 0 or n_out <= 0 or s_ref <= 0 or s_out <= 0:
            return False
        with torch.no_grad():
            self.scale.mul_(math.sqrt((s_ref / n_ref) / (s_out / n_out)))
            self.fitted.fill_(True)
        return True

    def extra_repr(self) -> str:
        return f"{self.name}, scale={float(self.scale):.6g}, fitted={bool(self.fitted)}"


def scale_factors(module: nn.Module) -> dict[str, ScaleFactor]:
    """All :class:`ScaleFactor` submodules of ``module`` by reference name (module order)."""
    return {m.name: m for m in module.modules() if isinstance(m, ScaleFactor)}


@torch.no_grad()
def fit_scale_factors(
    module: nn.Module,
    run_forward: Callable[[int], object],
    num_batches: int = 16,
    method: Literal["sequential", "one_pass"] = "sequential",
    refit: bool = False,
) -> dict[str, float]:
    """Fit the scale factors of ``module`` in forward-execution order (docs/GEMNET.md §5).

    Args:
        module: any module containing :class:`ScaleFactor` s (GemNet-T or a model around it).
        run_forward: ``run_forward(i)`` runs one forward pass of ``module`` on batch ``i`` drawn exactly
            like training inputs (random t, z from the reparameterisation, teacher-forced lattice,
            noisy types). Called under no_grad with the module in eval mode.
        num_batches: batches per factor for ``"sequential"``.
        method: ``"sequential"`` (the reference's procedure: each factor in order, accumulated over
            ``num_batches`` forwards, costs #factors x num_batches forwards) or ``"one_pass"`` (every
            factor is fitted from the statistics of a single forward, ``run_forward(0)``, in order
            of execution; pass one large batch).
        refit: also refit factors already marked fitted (e.g. the reference constants). Without it,
            fitted factors are never touched.

    Returns:
        {name: scale} of every factor after fitting.
    """
    factors = scale_factors(module)
    was_training = module.training
    module.eval()
    try:
        order: list[ScaleFactor] = []
        for f in factors.values():
            f._order_log = order
        try:
            if method == "one_pass":
                for f in factors.values():
                    if refit or not bool(f.fitted):
                        if refit:
                            f.scale.fill_(1.0)
                        f.mode = "one_pass"
                run_forward(0)
            elif method == "sequential":
                run_forward(0)  # records the execution order
            else:
                raise ValueError(f"method must be 'sequential' or 'one_pass', got {method!r}")
        finally:
            for f in factors.values():
                f._order_log = None
                f.mode = "apply"
        if method == "sequential":
            seen: set[int] = set()
            for f in order:
                if id(f) in seen or not (refit or not bool(f.fitted)):
                    continue
                seen.add(id(f))
                if refit:
                    f.scale.fill_(1.0)
                f.mode = "observe"
                try:
                    for i in range(num_batches):
                        run_forward(i)
                finally:
                    f.finish_observing()
    finally:
        module.train(was_training)
    return {name: float(f.scale) for name, f in factors.items()}
