"""Search spaces: `search_spaces/<method>.yaml` maps dotted config keys to Optuna
distributions. The method's own defaults (the published setting) are the first point tried.

    knobs:
      method.tau: {type: float, low: 0.05, high: 2.0, log: true}
      method.tap: {type: categorical, choices: [embedding, stage3]}
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna.distributions as od

from pcbench import REPO_ROOT
from pcbench.config import TrialConfig, build_config, load_yaml
from pcbench.errors import UserError

SPACES_DIR = REPO_ROOT / "search_spaces"


def default_space_path(method: str) -> Path:
    return SPACES_DIR / f"{method}.yaml"


def _distribution(path: str, key: str, spec: Any) -> od.BaseDistribution:
    where = f"{path}: knob '{key}'"
    if not isinstance(spec, dict) or "type" not in spec:
        raise UserError(f"{where} must be a mapping with a type (float, int or categorical)")
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


@dataclass
class SearchSpace:
    path: str
    distributions: dict[str, od.BaseDistribution]

    def first_point(self, template: TrialConfig) -> dict[str, Any]:
        flat = template.flat()
        return {key: _as_choice(flat[key]) for key in self.distributions}

    def validate(self, base: dict[str, Any], overrides: dict[str, Any]) -> TrialConfig:
        """Check every knob names a config field of this method, every choice and range end
        builds a valid config, and the default lies inside the space. Returns the template."""
        template = build_config(base, overrides)
        flat = template.flat()
        for key, dist in self.distributions.items():
            if key not in flat:
                raise UserError(f"{self.path}: knob '{key}' is not a setting of method "
                                f"'{template.method.name}'; valid keys: "
                                + ", ".join(k for k in flat if k.startswith(("method.", "train."))))
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
                raise UserError(f"{self.path}: {key}={default!r} (the method's default or your "
                                f"--set) lies outside the space; widen the space, since that "
                                f"setting is the first point tried")
        return template


def load_space(path: str | Path) -> SearchSpace:
    data = load_yaml(str(path))
    knobs = data.get("knobs")
    if not isinstance(knobs, dict) or not knobs:
        raise UserError(f"{path}: expected a 'knobs:' mapping of dotted keys to distributions")
    return SearchSpace(str(path), {k: _distribution(str(path), k, v) for k, v in knobs.items()})
