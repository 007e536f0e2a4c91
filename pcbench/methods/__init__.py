"""Method registry. A method is one module in this package decorated with `@register`;
every module here is imported on first use, so adding a method touches one file.

Variants (base.py's docstring has their contract): a registered name followed by plug-ins in
the order `<method>[+kd][+ls][+ctkd]`, each with the same knobs for every method that takes it:
- `+kd` (base.with_kd), the KD term: every method with a teacher but those that are KD on the
  logits themselves (kd, dkd, dist, nkd, wttm, mlkd: `takes_kd` False);
- `+ls` (base.with_ls, logit standardisation) and `+ctkd` (base.with_ctkd, curriculum
  temperature), the logit plug-ins: every method with `logit_hooks` (kd, dkd, dist, nkd, wttm, mlkd)
  and every `+kd` variant (on its KD term): `kd+ls`, `dkd+ctkd`, `pc+kd+ls`, `kd+ls+ctkd`.
A name that cannot take a plug-in is refused with one line naming the fix."""

import importlib
import pkgutil

from pcbench import plugins
from pcbench.errors import UserError
from pcbench.methods.base import (
    CTKD_SUFFIX,
    KD_SUFFIX,
    LS_SUFFIX,
    VARIANT_SUFFIXES,
    DataInfo,
    Method,
    MethodConfig,
    Step,
    with_ctkd,
    with_kd,
    with_ls,
)

__all__ = ["CTKD_SUFFIX", "KD_SUFFIX", "LS_SUFFIX", "VARIANT_SUFFIXES", "DataInfo", "Method", "MethodConfig",
           "Step", "base_method", "get_method", "is_method", "method_names", "method_origin", "register",
           "split_variant"]

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
    """The registered methods (their variants not listed)."""
    _discover()
    return sorted(_REGISTRY)


def split_variant(name: str) -> tuple[str, tuple[str, ...]]:
    """("pc", ("+kd", "+ls")) for `pc+kd+ls`: the registered name and the plug-ins after it (a
    method's name has no "+")."""
    base, *plugins_ = name.split("+")
    return base, tuple(f"+{p}" for p in plugins_)


def base_method(name: str) -> str:
    """`pc` for `pc+kd` and `pc+kd+ls`; a method's own name otherwise."""
    return split_variant(name)[0]


def is_method(name: str) -> bool:
    _discover()
    return split_variant(name)[0] in _REGISTRY and _refusal(name) is None


def _takes_kd(method: type[Method]) -> bool:
    return method.needs_teacher and method.takes_kd


def _logit_variants(suffix: str) -> str:
    return ", ".join(m + suffix for m in method_names() if _REGISTRY[m].logit_hooks)


def _refusal(name: str) -> str | None:
    """Why `name` (a registered method's variant) cannot be built, naming the fix; None if it can."""
    base, suffixes = split_variant(name)
    unknown = [s for s in suffixes if s not in VARIANT_SUFFIXES]
    if unknown:
        return (f"{name}: unknown plug-in '{unknown[0]}'; the variants are {', '.join(VARIANT_SUFFIXES)}, "
                f"written in that order (<method>{''.join(VARIANT_SUFFIXES)})")
    ordered = [s for s in VARIANT_SUFFIXES if s in suffixes]
    if list(suffixes) != ordered:
        return (f"{name}: write each plug-in once, in the order {', '.join(VARIANT_SUFFIXES)}: "
                f"{base}{''.join(ordered)}")
    method = _REGISTRY[base]
    hooks, done = method.logit_hooks, base  # a +kd variant's KD term reads the hooks
    for suffix in suffixes:
        if suffix == KD_SUFFIX:
            if not _takes_kd(method):
                why = "has no teacher" if not method.needs_teacher else "is itself KD on the logits"
                return (f"{name}: {base} {why}, so it takes no added KD term; use --method kd "
                        f"(its own w_kd and temperature) or another method{KD_SUFFIX}")
            hooks = True
        elif not hooks:
            if not method.needs_teacher:
                why = "has no teacher"
            elif method.reads_teacher_logits:
                why = "compares logits only inside its own terms, out of the plug-in's reach"
            else:
                why = "compares no logits"
            fix = (f"{base}{KD_SUFFIX}{suffix} (the plug-in on the added KD term) or "
                   if _takes_kd(method) else "")
            return (f"{name}: {done} {why}, so it takes no {suffix}; use {fix}a logit method's: "
                    f"{_logit_variants(suffix)}")
        done += suffix
    return None


_WRAP = {KD_SUFFIX: with_kd, LS_SUFFIX: with_ls, CTKD_SUFFIX: with_ctkd}


def get_method(name: str) -> type[Method]:
    _discover()
    base, suffixes = split_variant(name)
    if base not in _REGISTRY:
        raise UserError(f"unknown method '{name}': choose one of {', '.join(method_names())} "
                        f"(or a variant: <method>{KD_SUFFIX} for one with the KD term, "
                        f"<method>{LS_SUFFIX} or {CTKD_SUFFIX} for a logit method's plug-ins)")
    if not suffixes:
        return _REGISTRY[name]
    if name not in _VARIANTS:
        problem = _refusal(name)
        if problem is not None:
            raise UserError(problem)
        # each variant subclasses the one before it (pc+kd+ls of pc+kd), built once
        prefix = base + "".join(suffixes[:-1])
        _VARIANTS[name] = _WRAP[suffixes[-1]](get_method(prefix))
    return _VARIANTS[name]
