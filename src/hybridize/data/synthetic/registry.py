"""The registry: task name -> generator, config class and the preset that defines the task; building a task's config
and generating its examples by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from .example import Example
from .filler import FillerTokens
from .mqar_task import MQARConfig, mqar
from .niah_task import NIAHConfig, niah
from .passkey_task import PasskeyConfig, passkey


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    suite: str  # "niah", "passkey" or "mqar": what `hybridize eval --suite` selects
    generator: Callable[..., Example]
    config_cls: type
    preset: dict
    in_suite: bool = True  # run by `--suite SUITE`; the others only when named
    # whether an evaluation can give every prompt answer values of its own (`metrics.recall.build_cells`): not when
    # they come from a small pool (MQAR's 3-digit numbers), where only the needles (key with value) stay distinct
    distinct_values: bool = True


TASKS: dict[str, SyntheticTask] = {}


def register_task(name: str, suite: str, generator: Callable[..., Example], config_cls: type, in_suite: bool = True,
                  distinct_values: bool = True, **preset) -> None:
    if name in TASKS:
        raise ValueError(f"synthetic task {name!r} is already registered")
    config_cls(task=name, **preset)  # the preset must itself be a valid config
    TASKS[name] = SyntheticTask(name, suite, generator, config_cls, preset, in_suite, distinct_values)


register_task("niah_single_1", "niah", niah, NIAHConfig, haystack="noise", value_kind="number")
register_task("niah_single_2", "niah", niah, NIAHConfig, haystack="filler", value_kind="number")
register_task("niah_single_3", "niah", niah, NIAHConfig, haystack="filler", value_kind="uuid")
register_task("niah_multikey_1", "niah", niah, NIAHConfig, haystack="filler", value_kind="number", num_keys=4)
register_task("niah_multivalue", "niah", niah, NIAHConfig, in_suite=False, haystack="filler", value_kind="number",
              num_values=4)
register_task("niah_multiquery", "niah", niah, NIAHConfig, in_suite=False, haystack="filler", value_kind="number",
              num_keys=4, num_queries=4)
register_task("passkey", "passkey", passkey, PasskeyConfig)
# FlashMorph's gate-training data: 10 passkeys of 32 random words at random depths out of 1000, one asked for.
register_task("passkey_flashmorph", "passkey", passkey, PasskeyConfig, in_suite=False, num_passkeys=10,
              words_per_passkey=32, depth_candidates=1000)
register_task("mqar", "mqar", mqar, MQARConfig, distinct_values=False)


def task_config(name: str, **overrides):
    """The config of a registered task, with `overrides` (e.g. length=8192, depth=0.5) applied and validated."""
    if name not in TASKS:
        raise ValueError(f"Unknown synthetic task {name!r}. Available: {sorted(TASKS)}")
    task = TASKS[name]
    allowed = {f.name for f in fields(task.config_cls)} - {"task"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"task {name!r} has no option {bad[0]!r}; allowed: {sorted(allowed)}")
    return task.config_cls(task=name, **{**task.preset, **overrides})


def generate(config, seed: int, tokenizer, filler: FillerTokens | Sequence[str] | None = None) -> Example:
    """One example of `config.task` (a registered name); a pure function of its arguments."""
    if config.task not in TASKS:
        raise ValueError(f"Unknown synthetic task {config.task!r}. Available: {sorted(TASKS)}")
    task = TASKS[config.task]
    if not isinstance(config, task.config_cls):
        raise ValueError(f"task {config.task!r} takes a {task.config_cls.__name__}, got {type(config).__name__}")
    return task.generator(config, seed, tokenizer, filler)


def generate_examples(config, n: int, seed: int, tokenizer, filler=None) -> list[Example]:
    """n examples; example i uses seed `seed * 1_000_003 + i` (so seeds of different runs do not overlap)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(filler, FillerTokens) and filler is not None:
        filler = FillerTokens.build(tokenizer, filler)
    return [generate(config, seed * 1_000_003 + i, tokenizer, filler) for i in range(n)]


def suite_tasks(suite: str) -> list[str]:
    """The tasks `--suite SUITE` runs (RULER's NIAH single-1/2/3 + multikey-1, passkey, mqar)."""
    return [name for name, t in TASKS.items() if t.suite == suite and t.in_suite]
