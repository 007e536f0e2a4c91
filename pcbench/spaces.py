"""Search spaces. `search_spaces/<method>.yaml` maps the method's own dotted knobs to Optuna
distributions; `search_spaces/training.yaml` holds the training knobs, which every method
searches alike (one block, never copied into a method's file). A space is resolved against
the trial it searches before the search starts: layer roles become the pair's tap names and
relative ranges become absolute ones. The trial's own settings (the method's defaults, the
suite's per-pair published setting, --set) are the first point tried.

A variant (`pc+kd`, `kd+ls`, `dkd+ctkd`, `pc+kd+ls`) searches its method's space plus one shared
block per plug-in: search_spaces/kd_term.yaml (+kd), ls_term.yaml (+ls), ctkd_term.yaml
(+ctkd). Every method that takes a plug-in searches the same knobs over the same ranges, and no
method's own file may hold them. A `+ctkd` variant learns its temperature, so the method's
temperature knob (`kd_temperature` for a +kd variant) is left out of its search.

    knobs:
      method.tau: {type: float, low: 0.05, high: 2.0, log: true}
      method.tap: {type: categorical, choices: [embedding, last_stage, "stage[-2]"]}
      train.lr: {type: float, low: 0.25, high: 4.0, log: true, relative: true}   # training.yaml
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna.distributions as od

from pcbench import bundled
from pcbench.config import TrialConfig, build_config, load_yaml
from pcbench.errors import UserError
from pcbench.methods import base_method, get_method
from pcbench.methods.base import (
    CTKD_SUFFIX,
    CTKD_TERM_KNOBS,
    KD_SUFFIX,
    KD_TERM_KNOBS,
    LS_SUFFIX,
    LS_TERM_KNOBS,
)
from pcbench.models import stage_taps
from pcbench.models.roles import common_stages, resolve_taps

SPACES_DIR = bundled("search_spaces")
TRAINING_SPACE = SPACES_DIR / "training.yaml"
KD_TERM_SPACE = SPACES_DIR / "kd_term.yaml"  # what every `<method>+kd` variant adds, alike
LS_TERM_SPACE = SPACES_DIR / "ls_term.yaml"  # ... every `+ls` variant
CTKD_TERM_SPACE = SPACES_DIR / "ctkd_term.yaml"  # ... every `+ctkd` variant
# plug-in: (the class flag of a variant that has it, its knobs, its shared space)
PLUGIN_SPACES = {KD_SUFFIX: ("adds_kd", KD_TERM_KNOBS, KD_TERM_SPACE),
                 LS_SUFFIX: ("adds_ls", LS_TERM_KNOBS, LS_TERM_SPACE),
                 CTKD_SUFFIX: ("adds_ctkd", CTKD_TERM_KNOBS, CTKD_TERM_SPACE)}
TAP_KNOBS = ("method.tap", "method.taps")


@dataclass(frozen=True)
class DeclaredSpace:
    """A plug-in method's knobs given in Python (its class's `space`), read as a file's."""

    label: str
    knobs: dict[str, Any]

    def __str__(self) -> str:
        return self.label


def default_space_path(method: str) -> "Path | DeclaredSpace":
    """A method's own space; a variant's is its method's (the plug-ins' blocks come on top). A
    plug-in's: the `space` its class declares, else `<name>.yaml` beside its module."""
    cls = get_method(base_method(method))
    if cls.__module__.startswith("pcbench."):
        return SPACES_DIR / f"{cls.name}.yaml"
    if cls.space is not None:
        return DeclaredSpace(f"{cls.__module__}.{cls.__qualname__}.space", dict(cls.space))
    source = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if source is None:  # defined in a notebook or an interactive session
        raise UserError(f"method '{cls.name}' ({cls.__module__}) has no search space: give its class a "
                        f"`space` mapping of knobs")
    beside = Path(source).with_name(f"{cls.name}.yaml")
    if not beside.exists():
        raise UserError(f"method '{cls.name}' ({cls.__module__}) has no search space: give its class a "
                        f"`space` mapping of knobs, or put {beside.name} beside {beside.parent / ''}")
    return beside


def _distribution(path: str, key: str, spec: dict[str, Any]) -> od.BaseDistribution:
    where = f"{path}: knob '{key}'"
    kind, rest = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    try:
        if kind == "float":
            return od.FloatDistribution(float(rest.pop("low")), float(rest.pop("high")), **rest)
        if kind == "int":
            return od.IntDistribution(int(rest.pop("low")), int(rest.pop("high")), **rest)
        if kind == "categorical":
            return od.CategoricalDistribution(rest.pop("choices"), **rest)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{where} is not a valid {kind} distribution ({error}); "
                        f"give low/high (float, int) or choices (categorical)") from None
    raise UserError(f"{where} has unknown type '{kind}'; use float, int or categorical")


def _as_choice(value: Any) -> Any:
    """Lists (several taps) are searched as comma-joined strings: Optuna choices are scalars."""
    return ",".join(value) if isinstance(value, list) else value


def describe_distribution(dist: od.BaseDistribution) -> dict[str, Any]:
    """{type, choices} or {type, low, high, log}: how a dry run shows a knob."""
    if isinstance(dist, od.CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, od.IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log}


def read_knobs(path: "str | Path | DeclaredSpace",
               allowed_prefix: str | None = None) -> dict[str, dict[str, Any]]:
    """The `knobs:` mapping of a space file (or a declared space), each a mapping with a type."""
    data = {"knobs": path.knobs} if isinstance(path, DeclaredSpace) else load_yaml(str(path))
    if set(data) != {"knobs"}:  # an empty file, or knobs written at the top level, searches nothing
        unknown = ", ".join(sorted(map(str, set(data) - {"knobs"})))
        raise UserError(f"{path}: a space file holds one key, 'knobs:' (a mapping; `knobs: {{}}` "
                        f"searches the training knobs only)" + (f"; found {unknown}" if unknown else ""))
    knobs = data["knobs"]
    if knobs is None:
        knobs = {}
    if not isinstance(knobs, dict):
        raise UserError(f"{path}: expected a 'knobs:' mapping of dotted keys to distributions")
    for key, spec in knobs.items():
        if not isinstance(spec, dict) or "type" not in spec:
            raise UserError(f"{path}: knob '{key}' must be a mapping with a type "
                            f"(float, int or categorical)")
        if allowed_prefix and not str(key).startswith(allowed_prefix):
            raise UserError(f"{path}: '{key}' is not a method knob; a method's space holds only "
                            f"{allowed_prefix}* knobs (training knobs are searched for every "
                            f"method alike, from {TRAINING_SPACE.relative_to(SPACES_DIR.parent)})")

    return knobs


@dataclass
class SearchSpace:
    """A space resolved against one trial template: concrete tap names, absolute ranges."""

    path: str
    distributions: dict[str, od.BaseDistribution]

    def first_point(self, template: TrialConfig) -> dict[str, Any]:
        flat = template.flat()
        return {key: _as_choice(flat[key]) for key in self.distributions}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {key: describe_distribution(dist) for key, dist in self.distributions.items()}

    def validate(self, base: dict[str, Any], overrides: dict[str, Any]) -> TrialConfig:
        """Check every choice and range end builds a valid config and the template's own value
        (the first point) lies inside the space. Returns the template."""
        template = build_config(base, overrides)
        flat = template.flat()
        for key, dist in self.distributions.items():
            values = dist.choices if isinstance(dist, od.CategoricalDistribution) else (dist.low, dist.high)
            for value in values:
                try:
                    build_config(base, {**overrides, key: value})
                except UserError as error:
                    raise UserError(f"{self.path}: knob '{key}' value {value!r} is invalid: "
                                    f"{error}") from None
            default = _as_choice(flat[key])
            inside = (default in dist.choices if isinstance(dist, od.CategoricalDistribution)
                      else dist.low <= default <= dist.high)
            if not inside:
                raise UserError(f"{self.path}: {key}={default!r} (the method's default, the suite's "
                                f"per-pair setting or your --set) lies outside the space "
                                f"{describe_distribution(dist)}; widen the space, since that "
                                f"setting is the first point tried")
        return template


def _resolve(path: str, key: str, spec: dict[str, Any], template: TrialConfig,
             stages: list[str]) -> dict[str, Any]:
    """One knob's spec for this trial: tap roles to tap names, relative ranges to absolute."""
    spec = dict(spec)
    if spec.pop("relative", False):
        value = template.flat()[key]
        if spec.get("type") not in ("float", "int") or not isinstance(value, (int, float)):
            raise UserError(f"{path}: knob '{key}' is relative, so it must be a float or int "
                            f"knob with a numeric setting")
        spec["low"], spec["high"] = value * float(spec["low"]), value * float(spec["high"])
    if key in TAP_KNOBS and spec.get("type") == "categorical":
        resolved = []
        for choice in spec.get("choices") or []:
            names = resolve_taps(choice, stages) if choice is not None else None
            if names == [] or (key == "method.tap" and names is not None and len(names) != 1):
                continue  # a role this pair has no layer for (stage[-4] of three stages)
            resolved.append(None if names is None else ",".join(names))
        if not resolved:
            raise UserError(f"{path}: no choice of '{key}' names a layer of "
                            f"{template.teacher} -> {template.student} (stages: {', '.join(stages)})")
        spec["choices"] = list(dict.fromkeys(resolved))
    return spec


def load_space(source: "str | Path | DeclaredSpace", template: TrialConfig) -> SearchSpace:
    """The method's knobs in `source` and the shared training block, resolved against `template`
    (the trial as configured, without the search's choices)."""
    path = str(source)
    method = get_method(template.method.name)
    own = read_knobs(source, allowed_prefix="method.")
    alone = get_method(base_method(method.name)).Config.model_fields
    for key in own:
        knob = key.removeprefix("method.")
        for suffix, (_, plugin_knobs, shared) in PLUGIN_SPACES.items():
            if knob in plugin_knobs and knob not in alone:
                raise UserError(f"{path}: '{key}' belongs to the {suffix} plug-in, which every "
                                f"<method>{suffix} variant searches alike from "
                                f"{shared.relative_to(SPACES_DIR.parent)}; drop it here")
    # the shared blocks last: a method's file cannot narrow or widen them
    knobs = dict(own)
    for flag, _, shared in PLUGIN_SPACES.values():
        if getattr(method, flag):
            knobs.update(read_knobs(shared))
    if method.adds_ctkd:  # the learnt temperature replaces the method's
        knobs.pop(f"method.{method.temperature_knob}", None)
    knobs.update(read_knobs(TRAINING_SPACE))
    flat = template.flat()
    for key in knobs:
        if key not in flat:
            raise UserError(f"{path}: knob '{key}' is not a setting of method "
                            f"'{template.method.name}'; valid keys: "
                            + ", ".join(k for k in flat if k.startswith("method.")))
    models = (template.teacher, template.student) if method.needs_teacher else (template.student,)
    stages = common_stages(*(stage_taps(m) for m in models))
    return SearchSpace(path, {key: _distribution(path, key, _resolve(path, key, spec, template, stages))
                              for key, spec in knobs.items()})


def prepare_search(base: dict[str, Any], overrides: dict[str, Any],
                   path: str | Path | None = None) -> tuple[TrialConfig, SearchSpace]:
    """The trial template and its resolved, checked space (default: the method's own file)."""
    template = build_config(base, overrides)
    space = load_space(path or default_space_path(template.method.name), template)
    return space.validate(base, overrides), space
