"""Synthetic recall tasks: needle-in-a-haystack (RULER style), passkey retrieval and multi-query associative recall.

Every task is a pure function of (a typed config, a seed, a tokenizer, filler text) and returns one `Example`:
the prompt as token ids, the answer appended for training (`input_ids`), `labels` that are -100 everywhere but
on the answer tokens, the answer values, and metadata for per-slice metrics (context length, depth, where each
needle and each answer value sits). Lengths are counted in the model's tokens and are exact: the haystack is cut
from the tokenized filler to fill what the template and the needles leave, and needles are inserted at token
positions (snapped to the nearest word start) for the requested depth. The same examples serve evaluation
(generate from `prompt_ids`, score against `values`) and training (`input_ids` / `labels`, e.g. the passkey data
FlashMorph's gates learn from: `task_config("passkey_flashmorph", length=8192)`).

Worked example (a 4000-token BPE trained on the built-in corpus; filler = the built-in corpus)::

    >>> filler = FillerTokens.build(tok, iter_documents("builtin"))
    >>> ex = generate(task_config("niah_single_2", length=128, depth=0.5), seed=0, tokenizer=tok, filler=filler)
    >>> tok.decode(ex.prompt_ids)
    'Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you
    about the numbers afterwards.\n\nIf the os.fork() function is not present (e.g. One of the special magic numbers
    for clock is: 8946754. on Windows),\nsubprocess.Popen() is used as a fall\nWhat is the special magic number for
    clock mentioned in the provided text? The special magic number for clock mentioned in the provided text is'
    >>> ex.values, ex.context_length, ex.depth, round(ex.needle_depths[0], 2)
    (['8946754'], 128, 0.5, 0.53)
    >>> tok.decode(ex.input_ids[slice(*ex.value_spans[0])])   # where the answer sits in the context
    ' 8946754'
    >>> [t for t in ex.labels if t != -100] == tok.encode(" " + ex.answer, add_special_tokens=False)
    True

(0.53, not 0.5: the needle goes before the nearest word start, and this haystack is only 33 tokens long.)

Seeding: a generator draws everything from `random.Random(f"{config.task}:{seed}")`, so one seed gives the same
keys, values and haystack start at every length and depth. Training data uses that (episode n of a recipe draws with
seed `recipe seed * 1_000_003 + n`); an evaluation does not: `hybridize.metrics.recall.build_cells` gives each prompt
its own seed, from a range training never uses, and needles and values no other prompt of it holds.
The answer tokens carry no end-of-sequence token; evaluation generates a few tokens past the answer length.

One file per task family, each holding its config (frozen, validating itself; `task` names the registry entry that
generates it) and its generator: `niah_task`, `passkey_task`, `mqar_task`. What they share: `example` (the
`Example` record), `tokens` (the word list, tokenizing helpers), `filler` (`FillerTokens`), `layout` (placing
needles at exact token positions). `registry` maps task names to generators and presets (`TASKS`, `task_config`,
`generate`). Every public name is importable from here.
"""

from .example import IGNORE_INDEX, Example
from .filler import FillerTokens
from .mqar_task import MQARConfig, mqar
from .niah_task import NOISE, VALUE_KINDS, NIAHConfig, niah
from .passkey_task import PasskeyConfig, passkey
from .registry import TASKS, SyntheticTask, generate, generate_examples, register_task, suite_tasks, task_config
from .tokens import WORDS

__all__ = [
    "Example", "FillerTokens", "MQARConfig", "NIAHConfig", "PasskeyConfig", "SyntheticTask", "TASKS", "WORDS",
    "generate", "generate_examples", "mqar", "niah", "passkey", "register_task", "suite_tasks", "task_config",
]
