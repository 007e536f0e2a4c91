"""Method registry. A method is one module in this package decorated with `@register`;
every module here is imported on first use, so adding a method touches one file."""

import importlib
import pkgutil

from pcbench.errors import UserError
from pcbench.methods.base import DataInfo, DistillConfig, Method, MethodConfig, Step

__all__ = ["DataInfo", "DistillConfig", "Method", "MethodConfig", "Step", "get_method", "method_names",
           "register"]

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}': choose one of {', '.join(method_names())}")
    return _REGISTRY[name]
