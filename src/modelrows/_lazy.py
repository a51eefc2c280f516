"""Heavy modules imported on first use, so importing modelrows' modules stays light.

A module that uses torch only inside its functions writes::

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy_module("torch", globals())

Its first ``torch.anything`` imports torch and rebinds the module's global ``torch`` to it, so
every later use is a plain global lookup, as after ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule:
    __slots__ = ("_alias", "_name", "_namespace")

    def __init__(self, name: str, namespace: dict[str, Any], alias: str) -> None:
        self._name, self._namespace, self._alias = name, namespace, alias

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        if self._namespace.get(self._alias) is self:
            self._namespace[self._alias] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


def lazy_module(name: str, namespace: dict[str, Any], alias: str | None = None) -> Any:
    """A stand-in for module ``name`` bound as ``alias`` (default: ``name``) in ``namespace``
    (a module's ``globals()``): the first attribute read imports the module and puts it there."""
    return _LazyModule(name, namespace, alias or name)
