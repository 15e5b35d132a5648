"""Re-initialisation shared by the network blocks: ``reset_parameters()`` is the one place a block's
weights are drawn.

A block decorated with :func:`reset_after_build` builds its layers, undoes the random draws the
layers' own default initialisation made, then calls ``self.reset_parameters()``. So a seed gives the
weights ``reset_parameters()`` gives::

    torch.manual_seed(s); a = Block(...)
    torch.manual_seed(s); b.reset_parameters()   # b: any Block(...) of the same arguments
    # a and b now hold identical parameters

To keep the weights a seed gave before, ``reset_parameters()`` also repeats draws that are
overwritten (PyTorch's default init of a layer whose weights the block then re-draws).

A decorated block built inside another one's constructor skips its own ``reset_parameters()``
(the outer block's ``reset_parameters()`` initialises it, and the outer build's draws are undone
anyway), so nesting costs one initialisation, not one per level. Buffers that are not drawn
(constant tables, GemNet scale factors and their fitted flags) are left as they are.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = ["reset_after_build", "reset_modules"]

_Init = TypeVar("_Init", bound=Callable[..., None])
_building = threading.local()  # .active: a decorated constructor is running in this thread


def reset_after_build(init: _Init) -> _Init:
    """Decorator for an ``nn.Module.__init__``: undo the random draws of building the layers (the
    global CPU generator, where modules are built), then call ``self.reset_parameters()``."""

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args, **kwargs) -> None:
        if getattr(_building, "active", False):  # part of an outer block: it initialises us
            init(self, *args, **kwargs)
            return
        state = torch.random.get_rng_state()
        _building.active = True
        try:
            init(self, *args, **kwargs)
        finally:
            _building.active = False
            torch.random.set_rng_state(state)
        self.reset_parameters()

    return wrapper  # type: ignore[return-value]


def reset_modules(*modules: nn.Module) -> None:
    """``reset_parameters()`` of each module that has one; otherwise of its children, recursively
    (``nn.Sequential``, ``nn.ModuleList``, blocks without own parameters), in registration order."""
    for module in modules:
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            reset_modules(*module.children())
