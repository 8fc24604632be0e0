"""Synthesis tasks: which contrasts condition the model, in which order, and which one it synthesizes.

The order of the inputs is part of the model: G2 fuses the conditioning features pairwise (1->2, 2->3, 3->1), and
the published weights were trained with the orders below (spec 5.4). Tasks are picked by name (``brats_t1ce``) or
built from an explicit contrast list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import DataError

__all__ = ["CONTRASTS", "MASK_KEYS", "TASKS", "Task", "get_task", "resolve_task"]

#: Canonical contrast keys used in datalists and tasks.
CONTRASTS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "dwi", "adc")
#: Non-image keys a datalist item may carry.
MASK_KEYS: tuple[str, ...] = ("lesion", "brain_mask")

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Task:
    """A synthesis task: ``inputs`` (conditioning contrasts, in channel order) -> ``target``."""

    name: str
    inputs: tuple[str, ...]
    target: str

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError(f"task '{self.name}': needs at least one input contrast")
        for key in (*self.inputs, self.target):
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise DataError(f"task '{self.name}': invalid contrast key {key!r} (lower-case identifiers only)")
            if key in MASK_KEYS:
                raise DataError(f"task '{self.name}': {key!r} is a mask key, not a contrast")
        if self.target in self.inputs:
            raise DataError(f"task '{self.name}': target {self.target!r} is also an input {list(self.inputs)}")

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Every distinct contrast the task reads, inputs first then the target."""
        return tuple(dict.fromkeys((*self.inputs, self.target)))

    def describe(self) -> str:
        return f"{self.name}: [{', '.join(self.inputs)}] -> {self.target}"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("brats_t1ce", ("flair", "t2", "t1"), "t1ce"),
        Task("brats_flair", ("t1ce", "t1", "t2"), "flair"),
        Task("brats_t2", ("t1ce", "t1", "flair"), "t2"),
        Task("brats_t1", ("flair", "t1ce", "t2"), "t1"),
        Task("isles_flair", ("t1", "t2", "dwi"), "flair"),
        Task("isles_t1", ("t2", "dwi", "flair"), "t1"),
    )
}


def get_task(name: str) -> Task:
    """Look up one of the paper's tasks by name; unknown names list the valid ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        valid = ", ".join(TASKS)
        raise DataError(f"unknown task {name!r}; valid task names: {valid} (or give inputs= and target=)") from None


def _parse_arrow(spec: str) -> Task:
    """Parse ``"dwi,adc->flair"`` into a custom task."""
    left, _, right = spec.partition("->")
    inputs = tuple(s.strip() for s in left.split(",") if s.strip())
    return Task(f"custom_{right.strip()}", inputs, right.strip())


def resolve_task(
    task: str | Task | Mapping | None = None, inputs: Sequence[str] | None = None, target: str | None = None
) -> Task:
    """Build a ``Task`` from a name, a ``"a,b,c->d"`` string, a mapping, or explicit ``inputs``/``target``.

    Explicit ``inputs``/``target`` win over a named task, so a YAML config can keep ``task: brats_t1ce`` and still
    override the contrasts.
    """
    if inputs is not None or target is not None:
        if inputs is None or target is None:
            raise DataError("a custom task needs both inputs= (list of contrasts) and target= (one contrast)")
        if isinstance(inputs, str):
            inputs = [s.strip() for s in inputs.split(",") if s.strip()]
        name = task if isinstance(task, str) and task not in TASKS and "->" not in task else f"custom_{target}"
        return Task(name, tuple(inputs), target)
    if isinstance(task, Task):
        return task
    if isinstance(task, Mapping):
        if "inputs" not in task or "target" not in task:
            raise DataError(f"task mapping needs 'inputs' and 'target' keys, got {sorted(task)}")
        return Task(str(task.get("name", f"custom_{task['target']}")), tuple(task["inputs"]), str(task["target"]))
    if isinstance(task, str):
        if "->" in task:
            return _parse_arrow(task)
        return get_task(task)
    raise DataError(f"no task given; use one of {', '.join(TASKS)} or inputs=[...], target=...")
