"""Layer roles: method defaults and search spaces name layers by what they are in a network,
and each role resolves to concrete tap names for the trial's teacher and student before
anything runs, so that a four-stage VGG is offered `stage4` where a three-stage ResNet is
offered `stage3`.

    last_stage     the deepest stage                    stage[-2]    the one before it
    middle_stage   stage (n+1)//2 (FitNets' hint)       stage[-2:]   the last two
    all_stages     every stage                          embedding, stage2, ... as they are

Stages are counted on the pair's shorter model when teacher and student have different
stage counts, so a role never names a stage that one of the two lacks: `last_stage` of
resnet56 (3 stages) -> vgg8 (4) is stage3 on both.
"""

import re
from collections.abc import Iterable, Sequence

_INDEX = re.compile(r"stage\[(-\d+)\]")
_SLICE = re.compile(r"stage\[(-?\d*):(-?\d*)\]")
NAMED = ("last_stage", "middle_stage", "all_stages")


def common_stages(*stage_lists: Sequence[str]) -> list[str]:
    """The stages a role may name on every model given: the shorter list (stage1..stageN)."""
    return list(min(stage_lists, key=len))


def resolve_role(name: str, stages: Sequence[str]) -> list[str]:
    """Concrete tap names of one role (a plain tap name is returned as it is); [] when the
    role names no stage of these models (stage[-4] of a three-stage pair)."""
    stages = list(stages)
    if name == "last_stage":
        return stages[-1:]
    if name == "middle_stage":
        return [stages[(len(stages) - 1) // 2]] if stages else []
    if name == "all_stages":
        return stages
    if match := _INDEX.fullmatch(name):
        k = int(match.group(1))
        return [stages[k]] if -len(stages) <= k < 0 else []
    if match := _SLICE.fullmatch(name):
        start, stop = (int(g) if g else None for g in match.groups())
        return stages[start:stop]
    return [name]


def resolve_taps(value: str | Iterable[str], stages: Sequence[str]) -> list[str]:
    """A role, a tap name, or a list (or comma-joined string) of them: the concrete tap names,
    in order, each once."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [tap for item in items for tap in resolve_role(item.strip(), stages)]
    return list(dict.fromkeys(names))
