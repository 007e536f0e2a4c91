"""Method registry. A method is one module in this package decorated with `@register`;
every module here is imported on first use, so adding a method touches one file. Every
method with a teacher also exists as `<name>+kd` (base.with_kd): the method plus the KD term,
with the same KD knobs for all."""

import importlib
import pkgutil

from pcbench import plugins
from pcbench.errors import UserError
from pcbench.methods.base import KD_SUFFIX, DataInfo, Method, MethodConfig, Step, with_kd

__all__ = ["KD_SUFFIX", "DataInfo", "Method", "MethodConfig", "Step", "base_method", "get_method",
           "is_method", "method_names", "method_origin", "register"]

# A trial config's own sections and settings: a method of one of these names would take over
# `--set <name>.KNOB` (config.build_config reads a method's name there as a scope).
RESERVED_NAMES = frozenset({"method", "data", "train", "teacher", "student", "teacher_dataset", "seed",
                            "plugins", "teacher_weights", "teacher_sha256", "teacher_test_acc"})
_REGISTRY: dict[str, type[Method]] = {}
_VARIANTS: dict[str, type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method is known by its `name` (a plug-in's as well as pcbench's)."""
    _check_contract(cls)
    if not cls.__module__.startswith(f"{__name__}."):
        _discover()  # a plug-in's name is checked against every built-in one
    plugins.check_unique("method", cls.name, cls, _REGISTRY.get(cls.name))
    _REGISTRY[cls.name] = cls
    return cls


def _check_contract(cls) -> None:
    """What the engine and the searches rely on, checked when the method registers."""
    what = f"method class {getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"{what} is not a subclass of pcbench.methods.Method; derive it from Method")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"{what} has no valid `name` (letters, digits, _ and -): set name = \"...\"")
    if name in RESERVED_NAMES:
        raise UserError(f"{what}: '{name}' names a section of a trial's settings (--set {name}.KNOB "
                        f"must keep meaning that); give the method another name")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise UserError(f"{what}: its Config must be a subclass of pcbench.methods.MethodConfig")
    if config.model_fields["name"].default != name:
        raise UserError(f"{what}: its Config's `name` must default to '{name}' "
                        f"(name: Literal[\"{name}\"] = \"{name}\")")


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True  # first: an installed plug-in's import registers through here
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        plugins.load_installed()


def method_origin(name: str) -> str:
    """"pcbench", or "plugin <module>"."""
    return plugins.origin(get_method(base_method(name)).__module__)


def method_names() -> list[str]:
    """The registered methods (their `+kd` variants not listed)."""
    _discover()
    return sorted(_REGISTRY)


def base_method(name: str) -> str:
    """`pc` for `pc+kd`; a method's own name otherwise."""
    return name.removesuffix(KD_SUFFIX)


def is_method(name: str) -> bool:
    _discover()
    base = base_method(name)
    return base in _REGISTRY and (base == name or _takes_kd(_REGISTRY[base]))


def _takes_kd(method: type[Method]) -> bool:
    return method.needs_teacher and method.takes_kd


def get_method(name: str) -> type[Method]:
    _discover()
    base = base_method(name)
    if base not in _REGISTRY:
        raise UserError(f"unknown method '{name}': choose one of {', '.join(method_names())} "
                        f"(or <method>{KD_SUFFIX} for one with the KD term)")
    if base == name:
        return _REGISTRY[name]
    method = _REGISTRY[base]
    if not _takes_kd(method):
        why = "has no teacher" if not method.needs_teacher else "is itself KD on the logits"
        raise UserError(f"{name}: {base} {why}, so it takes no added KD term; use --method kd "
                        f"(its own w_kd and temperature) or another method{KD_SUFFIX}")
    if name not in _VARIANTS:
        _VARIANTS[name] = with_kd(method)
    return _VARIANTS[name]
