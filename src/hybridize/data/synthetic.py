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
keys, values and haystack start at every length and depth: across a grid, only length and depth change.
The answer tokens carry no end-of-sequence token; evaluation generates a few tokens past the answer length.
"""

from __future__ import annotations

import random
import re
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

IGNORE_INDEX = -100

# Keys, passkey words and MQAR keys are drawn from these: short, common, distinct English words.
WORDS = (
    "apple", "anchor", "arrow", "autumn", "badge", "bakery", "balloon", "bamboo", "banana", "barrel", "basket",
    "beacon", "bicycle", "blanket", "bottle", "bracelet", "bridge", "bucket", "butter", "cabin", "cactus", "camera",
    "candle", "canyon", "carpet", "castle", "cellar", "chair", "cherry", "chimney", "circle", "clock", "cloud",
    "coffee", "comet", "copper", "cotton", "crayon", "cricket", "crystal", "curtain", "dagger", "desert", "diamond",
    "dolphin", "dragon", "drum", "eagle", "echo", "elbow", "engine", "falcon", "feather", "fence", "fiddle", "flame",
    "flower", "forest", "fossil", "fountain", "garden", "garlic", "giraffe", "glacier", "globe", "glove", "granite",
    "guitar", "hammer", "harbor", "harvest", "helmet", "honey", "horizon", "island", "ivory", "jacket", "jungle",
    "kettle", "kitten", "ladder", "lantern", "lemon", "library", "lizard", "magnet", "mango", "maple", "marble",
    "meadow", "mirror", "monkey", "mountain", "napkin", "needle", "nest", "ocean", "olive", "orange", "orbit",
    "oyster", "paddle", "palace", "panda", "parrot", "pebble", "pencil", "pepper", "piano", "pillow", "planet",
    "pocket", "pond", "potato", "prism", "pumpkin", "puzzle", "quartz", "rabbit", "radio", "rainbow", "raven",
    "ribbon", "river", "rocket", "saddle", "salmon", "sandal", "satellite", "scarf", "shadow", "shovel", "silver",
    "socket", "spider", "spoon", "stable", "statue", "stone", "summit", "sunset", "swan", "table", "teapot",
    "thunder", "tiger", "timber", "tomato", "tower", "tractor", "trumpet", "tulip", "tunnel", "turtle", "umbrella",
    "valley", "velvet", "violin", "volcano", "wagon", "walnut", "wardrobe", "whale", "whistle", "window", "winter",
    "wizard", "yogurt", "zebra",
)

# RULER's noise haystack (niah_single_1): the same five sentences over and over.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


@dataclass(frozen=True)
class Example:
    """One synthetic example. Token spans are [start, end) indices into `input_ids` (prompt + answer)."""

    task: str
    input_ids: list[int]  # (context_length + len(answer tokens),) prompt then answer
    labels: list[int]  # same length; IGNORE_INDEX except on the answer tokens
    prompt_ids: list[int]  # (context_length,) what a model sees at evaluation
    answer: str  # the answer text appended after the prompt (its tokens are `" " + answer`)
    values: list[str]  # every value the answer must contain, in answer order
    context_length: int  # == len(prompt_ids), in the tokenizer's tokens
    depth: float | None  # requested depth of the first queried needle (None: drawn at random)
    needle_depths: list[float]  # where each needle starts, as a fraction of the haystack (0 = top, 1 = bottom)
    needle_spans: list[tuple[int, int]]  # each needle (NIAH / passkey: all; MQAR: the queried pairs)
    value_spans: list[tuple[int, int]]  # tokens of each value of `values` inside the context
    seed: int = 0

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.context_length:]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FillerTokens:
    """Haystack material: documents tokenized once, in order, each followed by a blank line, cut at `max_tokens`.

    `word_start[i]` says whether a needle may go right before token i (it starts a word or is whitespace);
    `starts` are the tokens that begin a sentence, where a haystack window may begin. Windows longer than the stream
    wrap around to its beginning. Needs a fast tokenizer for the offsets; with a slow one every position counts as a
    word start and a sentence start."""

    ids: tuple[int, ...]
    word_start: tuple[bool, ...]
    starts: tuple[int, ...] = field(repr=False)

    @classmethod
    def build(cls, tokenizer, documents: Iterable[str], max_tokens: int = 2**20) -> FillerTokens:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
        ids: list[int] = []
        flags: list[bool] = []
        starts: list[int] = []
        for doc in documents:
            if not doc.strip():
                continue
            text = doc.strip() + "\n\n"
            if getattr(tokenizer, "is_fast", False):
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                sentences = {m.start(1) for m in _SENTENCE.finditer(text)}  # first character of each sentence
                for j, (s, e) in enumerate(enc["offset_mapping"]):
                    flags.append(s == 0 or text[s].isspace() or text[s - 1].isspace())
                    first = s + len(text[s:e]) - len(text[s:e].lstrip())
                    if first in sentences:
                        starts.append(len(ids) + j)
                ids.extend(enc["input_ids"])
            else:
                piece = tokenizer.encode(text, add_special_tokens=False)
                starts.extend(range(len(ids), len(ids) + len(piece)))
                ids.extend(piece)
                flags.extend([True] * len(piece))
            if len(ids) >= max_tokens:
                break
        if not ids:
            raise ValueError("filler has no text: give at least one non-empty document")
        ids, flags = ids[:max_tokens], flags[:max_tokens]
        flags[0] = True
        starts = [i for i in starts if i < len(ids)] or [0]
        return cls(tuple(ids), tuple(flags), tuple(starts))

    def window(self, start: int, n: int) -> tuple[list[int], list[bool]]:
        """n tokens from `start`, wrapping around; the first counts as a word start."""
        N = len(self.ids)
        idx = [(start + j) % N for j in range(n)]
        flags = [self.word_start[i] for i in idx]
        if flags:
            flags[0] = True
        return [self.ids[i] for i in idx], flags


_SENTENCE = re.compile(r"(?:\A|[.!?]\s+|\n)\s*(\S)")


# Configs. Each is frozen and validates itself; `task` names the registry entry that generates it.


def _check_common(cfg) -> None:
    if not isinstance(cfg.length, int) or isinstance(cfg.length, bool) or cfg.length < 1:
        raise ValueError(f"length must be a positive number of tokens, got {cfg.length!r}")
    if cfg.depth is not None and not (0.0 <= cfg.depth <= 1.0):
        raise ValueError(f"depth must be in [0, 1] (0 = top of the haystack, 1 = bottom) or None, got {cfg.depth!r}")


@dataclass(frozen=True)
class NIAHConfig:
    """RULER needle-in-a-haystack: needles "One of the special magic numbers for KEY is: VALUE." in a haystack.

    `num_keys` keys get `num_values` needles each; the first `num_queries` keys are asked for. The first needle of
    the first key goes at `depth`, the others at depths drawn from `depth_candidates` evenly spaced ones."""

    task: str = "niah_single_2"
    length: int = 4096
    depth: float | None = None
    haystack: str = "filler"  # "noise" (RULER's repeated sentences) or "filler" (the filler documents)
    value_kind: str = "number"  # "number" (7 digits), "uuid", "word"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    depth_candidates: int = 1000

    def __post_init__(self):
        _check_common(self)
        if self.haystack not in ("noise", "filler"):
            raise ValueError(f"haystack must be one of ['noise', 'filler'], got {self.haystack!r}")
        if self.value_kind not in VALUE_KINDS:
            raise ValueError(f"value_kind must be one of {list(VALUE_KINDS)}, got {self.value_kind!r}")
        for name in ("num_keys", "num_values", "num_queries", "depth_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_queries > self.num_keys:
            raise ValueError(f"num_queries={self.num_queries} must be <= num_keys={self.num_keys}")
        if self.num_keys > len(WORDS):
            raise ValueError(f"num_keys must be <= {len(WORDS)} (the key word list), got {self.num_keys}")


@dataclass(frozen=True)
class PasskeyConfig:
    """Passkeys of `words_per_passkey` random words hidden in filler; the question asks for one (`query="one"`) or
    for all of them in the order they appear (`query="all"`). With several passkeys each carries a distinct number
    (a random permutation of 1..N, so the number says nothing about the position)."""

    task: str = "passkey"
    length: int = 4096
    depth: float | None = None
    num_passkeys: int = 1
    words_per_passkey: int = 5
    query: str = "one"
    depth_candidates: int = 1000

    def __post_init__(self):
        _check_common(self)
        for name in ("num_passkeys", "words_per_passkey", "depth_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.query not in ("one", "all"):
            raise ValueError(f"query must be one of ['one', 'all'], got {self.query!r}")


@dataclass(frozen=True)
class MQARConfig:
    """Multi-query associative recall (zoology's MQAR in words): the context is a list of "KEY: VALUE" lines (two-word
    keys, 3-digit values) filling the length; the question lists `num_queries` keys and the answer is their values
    in that order. `depth` places the first queried pair; the others are drawn at random."""

    task: str = "mqar"
    length: int = 4096
    depth: float | None = None
    num_queries: int = 4

    def __post_init__(self):
        _check_common(self)
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")


# Helpers shared by the generators.


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _special_prefix(tokenizer) -> list[int]:
    """The tokens the tokenizer puts before a text by itself (Llama's BOS; nothing for Qwen)."""
    bare = _encode(tokenizer, "a")
    full = list(tokenizer.encode("a"))
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i]
    return []


def _value(rng: random.Random, kind: str) -> str:
    return VALUE_KINDS[kind][2](rng)


VALUE_KINDS = {  # kind -> (singular, plural, draw)
    "number": ("number", "numbers", lambda rng: str(rng.randint(1_000_000, 9_999_999))),
    "uuid": ("uuid", "uuids", lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4))),
    "word": ("word", "words", lambda rng: rng.choice(WORDS)),
}


@dataclass
class _Needle:
    """A needle as three separately tokenized pieces, so that the value's tokens are known exactly."""

    depth: float  # target depth in [0, 1]
    text: str  # the value, as the answer must contain it
    pre: list[int]
    value: list[int]  # tokens of " " + text
    post: list[int]

    @property
    def ids(self) -> list[int]:
        return self.pre + self.value + self.post


def _needle(tokenizer, depth: float, pre: str, value: str, post: str) -> _Needle:
    return _Needle(depth, value, _encode(tokenizer, pre), _encode(tokenizer, " " + value), _encode(tokenizer, post))


@dataclass
class _Layout:
    prompt: list[int]  # (length,)
    spans: list[tuple[int, int]]  # per needle, in needle order
    value_spans: list[tuple[int, int]]
    depths: list[float]


def _filler(tokenizer, filler) -> FillerTokens:
    if isinstance(filler, FillerTokens):
        return filler
    if filler is None or isinstance(filler, str):
        raise ValueError("filler must be a FillerTokens or a sequence of documents (strings)")
    return FillerTokens.build(tokenizer, filler)


def _random_depths(rng: random.Random, k: int, candidates: int) -> list[float]:
    """k distinct depths out of `candidates` evenly spaced ones in [0, 1] (with replacement past `candidates`)."""
    grid = [i / max(candidates - 1, 1) for i in range(candidates)]
    return rng.sample(grid, k) if k <= candidates else [rng.choice(grid) for _ in range(k)]


def _too_short(cfg, overhead: int) -> ValueError:
    return ValueError(
        f"length={cfg.length} is too short for task {cfg.task!r}: its template and needles take {overhead} tokens; "
        f"use length >= {overhead + 1}"
    )


def _layout(cfg, rng: random.Random, filler: FillerTokens, head: list[int], needles: list[_Needle],
            question: list[int]) -> _Layout:
    """prompt = head + haystack with the needles inserted + question; the haystack takes what is left of length.

    Each needle goes before the word start nearest to depth * haystack length (ties: the earlier one); needles that
    land on the same point stay in needle order."""
    overhead = len(head) + len(question) + sum(len(n.ids) for n in needles)
    n = cfg.length - overhead
    if n < 1:
        raise _too_short(cfg, overhead)
    hay, flags = filler.window(rng.choice(filler.starts), n)
    bounds = [i for i, f in enumerate(flags) if f] + [n]  # sorted insertion points
    places = []
    for k, needle in enumerate(needles):
        target = needle.depth * n
        j = bisect_left(bounds, target)
        places.append((min(bounds[max(j - 1, 0):j + 1], key=lambda b: (abs(b - target), b)), k))
    places.sort()
    prompt = list(head)
    spans, value_spans, depths = [None] * len(needles), [None] * len(needles), [0.0] * len(needles)
    prev = 0
    for pos, k in places:
        prompt.extend(hay[prev:pos])
        start = len(prompt)
        prompt.extend(needles[k].ids)
        spans[k] = (start, len(prompt))
        v0 = start + len(needles[k].pre)
        value_spans[k] = (v0, v0 + len(needles[k].value))
        depths[k] = pos / n
        prev = pos
    prompt.extend(hay[prev:])
    prompt.extend(question)
    assert len(prompt) == cfg.length, (len(prompt), cfg.length)
    return _Layout(prompt, spans, value_spans, depths)


def _example(cfg, seed: int, tokenizer, layout: _Layout, values: list[str], value_spans: list[tuple[int, int]],
             sep: str) -> Example:
    answer = sep.join(values)
    answer_ids = _encode(tokenizer, " " + answer)
    return Example(
        task=cfg.task,
        input_ids=layout.prompt + answer_ids,
        labels=[IGNORE_INDEX] * len(layout.prompt) + answer_ids,
        prompt_ids=layout.prompt,
        answer=answer,
        values=values,
        context_length=len(layout.prompt),
        depth=cfg.depth,
        needle_depths=layout.depths,
        needle_spans=layout.spans,
        value_spans=value_spans,
        seed=seed,
    )


def niah(cfg: NIAHConfig, seed: int, tokenizer, filler) -> Example:
    """RULER NIAH. The answer: the queried keys in the order asked, each key's values in the order they appear in the
    text, joined by ", "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    singular, plural, _ = VALUE_KINDS[cfg.value_kind]
    keys = rng.sample(WORDS, cfg.num_keys)
    depths = _random_depths(rng, cfg.num_keys * cfg.num_values, cfg.depth_candidates)
    if cfg.depth is not None:
        depths[0] = cfg.depth
    needles = []  # key i's values are needles i * num_values ... (i + 1) * num_values - 1
    for i, key in enumerate(keys):
        for j in range(cfg.num_values):
            needles.append(_needle(tokenizer, depths[i * cfg.num_values + j],
                                   f" One of the special magic {plural} for {key} is:", _value(rng, cfg.value_kind), "."))
    hay = FillerTokens.build(tokenizer, [NOISE * 8]) if cfg.haystack == "noise" else _filler(tokenizer, filler)
    head = _special_prefix(tokenizer) + _encode(
        tokenizer, f"Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
                   f"I will quiz you about the {plural} afterwards.\n")
    queried = keys[:cfg.num_queries]
    q = queried[0] if len(queried) == 1 else ", ".join(queried[:-1]) + " and " + queried[-1]
    if cfg.num_values == 1 and cfg.num_queries == 1:
        question = (f"\nWhat is the special magic {singular} for {q} mentioned in the provided text? "
                    f"The special magic {singular} for {q} mentioned in the provided text is")
    else:
        question = (f"\nWhat are all the special magic {plural} for {q} mentioned in the provided text? "
                    f"The special magic {plural} for {q} mentioned in the provided text are")
    layout = _layout(cfg, rng, hay, head, needles, _encode(tokenizer, question))
    order = []
    for i in range(cfg.num_queries):
        ks = range(i * cfg.num_values, (i + 1) * cfg.num_values)
        order.extend(sorted(ks, key=lambda k: layout.spans[k][0]))
    return _example(cfg, seed, tokenizer, layout, [needles[k].text for k in order],
                    [layout.value_spans[k] for k in order], ", ")


def passkey(cfg: PasskeyConfig, seed: int, tokenizer, filler) -> Example:
    """Passkey retrieval. The answer: the asked passkey's words, or (query="all") every passkey in the order they
    appear, joined by "; "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    N = cfg.num_passkeys
    numbers = rng.sample(range(1, N + 1), N)
    keys = [" ".join(rng.choice(WORDS) for _ in range(cfg.words_per_passkey)) for _ in range(N)]
    depths = _random_depths(rng, N, cfg.depth_candidates)
    if cfg.depth is not None:
        depths[0] = cfg.depth
    label = [f" {x}" if N > 1 else "" for x in numbers]
    needles = [_needle(tokenizer, depths[k], f" The pass key{label[k]} is:", keys[k], ". Remember it.")
               for k in range(N)]
    head = _special_prefix(tokenizer) + _encode(
        tokenizer, "There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there.\n")
    if cfg.query == "one":
        question = f"\nWhat is the pass key{label[0]}? The pass key{label[0]} is:"
    else:
        question = "\nWhat are all the pass keys, in the order they appear in the text? The pass keys are:"
    layout = _layout(cfg, rng, _filler(tokenizer, filler), head, needles, _encode(tokenizer, question))
    order = [0] if cfg.query == "one" else sorted(range(N), key=lambda k: layout.spans[k][0])
    return _example(cfg, seed, tokenizer, layout, [keys[k] for k in order], [layout.value_spans[k] for k in order],
                    "; ")


def mqar(cfg: MQARConfig, seed: int, tokenizer, filler=None) -> Example:
    """MQAR. `filler` is unused: the key-value lines are the whole context. The answer: the values of the queried
    keys in the order asked, joined by ", "."""
    rng = random.Random(f"{cfg.task}:{seed}")
    head = _special_prefix(tokenizer) + _encode(
        tokenizer, "Below is a list of key-value pairs. Memorize them; I will ask you for the values of some keys.\n")
    template = "\nGive the values of these keys, in order: {}. The values are:"
    newline = _encode(tokenizer, "\n")[-1:]
    fixed = len(head) + len(_encode(tokenizer, template.format("")))
    # Lines are "KEY: VALUE\n", built from separately tokenized pieces (so the value's tokens are known). Draw them
    # until the next one would not leave room for a question about the longest keys drawn so far (+1 token each for
    # the separator, +2 of slack for merges at the joins).
    seen: set[str] = set()
    lines: list[tuple[list[int], list[int]]] = []  # (key tokens, value tokens) per line
    keys, vals = [], []
    used, longest = 0, 0
    while True:
        key = " ".join(rng.sample(WORDS, 2))
        if key in seen:
            continue
        seen.add(key)
        val = str(rng.randint(100, 999))
        k_ids, v_ids = _encode(tokenizer, f"{key}:"), _encode(tokenizer, f" {val}")
        size = len(k_ids) + len(v_ids) + len(newline)
        q_len = len(_encode(tokenizer, f" {key}"))
        bound = cfg.num_queries * (max(longest, q_len) + 1) + 2
        if fixed + used + size + bound > cfg.length:
            break
        lines.append((k_ids, v_ids)), keys.append(key), vals.append(val)
        used, longest = used + size, max(longest, q_len)
    if len(lines) < cfg.num_queries:
        raise _too_short(cfg, fixed + cfg.num_queries * (size + q_len + 1) + 2)
    P = len(lines)
    if cfg.depth is not None:
        first = min(round(cfg.depth * (P - 1)), P - 1)
        queries = [first] + rng.sample([i for i in range(P) if i != first], cfg.num_queries - 1)
    else:
        queries = rng.sample(range(P), cfg.num_queries)
    question = _encode(tokenizer, template.format("; ".join(keys[i] for i in queries)))
    pad = cfg.length - len(head) - used - len(question)
    if pad < 0:
        raise RuntimeError(f"mqar: the question took {-pad} tokens more than reserved (a tokenizer that merges across "
                           "'; '); please report it with the tokenizer's name")
    prompt = head + newline * pad  # blank lines take the few tokens that no further pair fits in
    region_start = len(prompt)
    starts = []
    for k_ids, v_ids in lines:
        starts.append(len(prompt))
        prompt.extend(k_ids + v_ids + newline)
    prompt.extend(question)
    assert len(prompt) == cfg.length, (len(prompt), cfg.length)
    spans = [(starts[i], starts[i] + len(lines[i][0]) + len(lines[i][1]) + len(newline)) for i in queries]
    value_spans = [(starts[i] + len(lines[i][0]), starts[i] + len(lines[i][0]) + len(lines[i][1])) for i in queries]
    depths = [(starts[i] - region_start) / max(used, 1) for i in queries]
    layout = _Layout(prompt, spans, value_spans, depths)
    return _example(cfg, seed, tokenizer, layout, [vals[i] for i in queries], value_spans, ", ")


# The registry: task name -> generator, config class and the preset that defines the task.


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    suite: str  # "niah", "passkey" or "mqar": what `hybridize eval --suite` selects
    generator: Callable[..., Example]
    config_cls: type
    preset: dict
    in_suite: bool = True  # run by `--suite SUITE`; the others only when named


TASKS: dict[str, SyntheticTask] = {}


def register_task(name: str, suite: str, generator: Callable[..., Example], config_cls: type, in_suite: bool = True,
                  **preset) -> None:
    if name in TASKS:
        raise ValueError(f"synthetic task {name!r} is already registered")
    config_cls(task=name, **preset)  # the preset must itself be a valid config
    TASKS[name] = SyntheticTask(name, suite, generator, config_cls, preset, in_suite)


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
register_task("mqar", "mqar", mqar, MQARConfig)


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


__all__ = [
    "Example", "FillerTokens", "MQARConfig", "NIAHConfig", "PasskeyConfig", "SyntheticTask", "TASKS", "WORDS",
    "generate", "generate_examples", "mqar", "niah", "passkey", "register_task", "suite_tasks", "task_config",
]
