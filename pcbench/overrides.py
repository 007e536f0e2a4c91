"""`--set key=value` parsing: light (YAML only), so the command line can read its options
without loading PyTorch."""

from typing import Any

import yaml

from pcbench.errors import UserError


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings to {key: value}; values are read as YAML (0.05, true, [a, b])."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{pair}' is not key=value; write it like --set method.tau=0.05")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {pair}: the value does not parse as YAML; quote it") from None
        if isinstance(value, dict):  # `train={}` would drop every train setting given elsewhere
            raise UserError(f"--set {pair}: set a section's keys one by one, as --set "
                            f"{key.strip()}.<key>=<value>")
        overrides[key.strip()] = value
    return overrides
