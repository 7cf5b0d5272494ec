"""What a report's recall entries support: each rate with its Wilson 95% interval, and paired comparisons of two
models on the same prompts (McNemar's exact test). Pure functions over `report.json`'s entries, so that a pair the
report did not list can be computed from the file afterwards:

    report = json.loads(Path("out/eval/report.json").read_text())
    pooled(report["results"], "halo", "passkey", length=1024)        # {"n": 201, "successes": 150, "recall": ...}
    paired(report["results"], "halo", "teacher", "passkey", 1024)    # {"only_a": 3, "only_b": 41, "p": 1.2e-09, ...}

An exact-match entry (one model, task, length, depth) carries `samples` (n), `successes`, `correct` (one "1" / "0"
per prompt, in the cell's order) and `prompts` (the cell's fingerprint, `metrics.recall.Cell.fingerprint`). Pooling
over depths (or lengths) adds the counts of independent prompts: `metrics.recall.build_cells` gives no two prompts of
an evaluation a needle or value in common. Pairing concatenates the two models' `correct` strings cell by cell, and
refuses cells whose fingerprints differ (not the same prompts).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..metrics.stats import mcnemar_p, paired_counts, paired_permutation_p, wilson_interval

ALL = "all"  # `depth` / `length` of a row pooled over every depth / length


def _cells(entries: Iterable[dict], model: str, task: str, length=ALL, depth=ALL) -> list[dict]:
    return [e for e in entries if e["model"] == model and e["task"] == task and e["metric"] == "exact_match"
            and (length == ALL or e["length"] == length) and (depth == ALL or e["depth"] == depth)]


def _successes(e: dict) -> int:
    if "successes" in e:
        return int(e["successes"])
    return round(e["value"] * e["samples"])  # a report written before entries carried their counts


def rate(successes: int, n: int) -> dict:
    """{"n", "successes", "recall", "ci_low", "ci_high"}: a rate with its Wilson 95% interval."""
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "successes": successes, "recall": successes / n if n else float("nan"), "ci_low": lo,
            "ci_high": hi}


def pooled(entries: Iterable[dict], model: str, task: str, length=ALL, depth=ALL) -> dict | None:
    """One model's exact-match recall on `task` over the cells that match (`length` / `depth` = ALL: every one), as
    `rate(...)`; None when nothing matches."""
    cells = _cells(entries, model, task, length, depth)
    if not cells:
        return None
    return rate(sum(_successes(e) for e in cells), sum(int(e["samples"]) for e in cells))


def _key(e: dict) -> tuple:
    return e["task"], e["length"], -1.0 if e["depth"] is None else e["depth"]


def paired(entries: Iterable[dict], a: str, b: str, task: str, length=ALL, depth=ALL) -> dict | None:
    """Models `a` and `b` on the same prompts of `task` (cells matching `length` / `depth`): {"n", "both", "only_a",
    "only_b", "neither", "p"} with McNemar's exact two-sided p; None when either has no per-prompt results there."""
    entries = list(entries)
    ca = {_key(e): e for e in _cells(entries, a, task, length, depth)}
    cb = {_key(e): e for e in _cells(entries, b, task, length, depth)}
    keys = sorted(set(ca) & set(cb))
    if not keys or any("correct" not in ca[k] or "correct" not in cb[k] for k in keys):
        return None
    xa, xb = [], []
    for k in keys:
        if ca[k].get("prompts") != cb[k].get("prompts"):
            raise ValueError(f"{a} and {b} were scored on different prompts at {k} (fingerprints "
                             f"{ca[k].get('prompts')} and {cb[k].get('prompts')}): they cannot be paired")
        xa += [c == "1" for c in ca[k]["correct"]]
        xb += [c == "1" for c in cb[k]["correct"]]
    counts = paired_counts(xa, xb)
    return {"n": len(xa), **counts, "p": mcnemar_p(counts["only_a"], counts["only_b"])}


def paired_perplexity(entries: Iterable[dict], a: str, b: str, length) -> dict | None:
    """Models `a` and `b` on the same perplexity windows, the bucket ending at `length`: {"n" (windows), "nll_a",
    "nll_b", "ppl_a", "ppl_b", "p"} with the paired sign-flip test of the per-window NLLs; None when either has no
    per-window values there; ValueError when their windows differ."""
    entries = list(entries)

    def one(model):
        got = [e for e in entries if e["model"] == model and e.get("metric") == "perplexity" and e["length"] == length]
        return got[0] if got and "window_nll" in got[0] else None

    ea, eb = one(a), one(b)
    if ea is None or eb is None:
        return None
    if ea.get("windows") != eb.get("windows") or len(ea["window_nll"]) != len(eb["window_nll"]):
        raise ValueError(f"{a} and {b} were scored on different perplexity windows (fingerprints {ea.get('windows')} "
                         f"and {eb.get('windows')}): they cannot be paired")
    return {"n": len(ea["window_nll"]), "nll_a": ea["nll"], "nll_b": eb["nll"], "ppl_a": ea["value"],
            "ppl_b": eb["value"], "p": paired_permutation_p(ea["window_nll"], eb["window_nll"])}


def attention_free(model_meta: dict) -> bool:
    return model_meta.get("attention_layers") == 0


def report_pairs(models: list[dict]) -> list[tuple[str, str]]:
    """The pairs a report tests (`models`: report.json's meta["models"]): every student against the teacher, every
    student that keeps attention against every attention-free (all-linear) student, and the students that keep
    attention against each other (two mixers, selectors or stages side by side), each pair once in the given order."""
    teacher = [m["name"] for m in models if m["role"] == "teacher"]
    students = [m for m in models if m["role"] != "teacher"]
    pairs = [(s["name"], t) for s in students for t in teacher]
    linear = [m["name"] for m in students if attention_free(m)]
    pairs += [(s["name"], x) for s in students if not attention_free(s) for x in linear]
    hybrids = [m["name"] for m in students if not attention_free(m)]
    pairs += [(a, b) for i, a in enumerate(hybrids) for b in hybrids[i + 1:]]
    return pairs


def recall_rows(entries: list[dict], models: list[str]) -> list[dict]:
    """Per model, task and length: exact-match recall pooled over depths, with its interval (report.json's
    `recall`)."""
    rows = []
    for task in dict.fromkeys(e["task"] for e in entries if e["metric"] == "exact_match"):
        lengths = sorted({e["length"] for e in entries if e["task"] == task and e["metric"] == "exact_match"})
        for model in models:
            for length in lengths:
                r = pooled(entries, model, task, length)
                if r is not None:
                    beyond = any(e.get("beyond_trained_context") for e in _cells(entries, model, task, length))
                    rows.append({"model": model, "task": task, "length": length, **r,
                                 "beyond_trained_context": beyond})
    return rows


def paired_rows(entries: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Each pair on each task: per cell (length, depth), pooled over depths per length, and over everything
    (report.json's `paired`). A row: a, b, task, length, depth, n, both, only_a, only_b, neither, p."""
    rows = []
    tasks = list(dict.fromkeys(e["task"] for e in entries if e["metric"] == "exact_match"))
    for a, b in pairs:
        for task in tasks:
            cells = sorted({(e["length"], e["depth"]) for e in _cells(entries, a, task)},
                           key=lambda c: (c[0], -1.0 if c[1] is None else c[1]))
            grid = [*cells, *((n, ALL) for n in sorted({c[0] for c in cells})), (ALL, ALL)]
            for length, depth in grid:
                r = paired(entries, a, b, task, length, depth)
                if r is not None:
                    rows.append({"a": a, "b": b, "task": task, "length": length, "depth": depth, **r})
    return rows


def paired_perplexity_rows(entries: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Each pair on each perplexity bucket both have per-window values for (report.json's `paired_perplexity`): a, b,
    length (the bucket's end), n (windows), nll_a, nll_b, ppl_a, ppl_b and the paired sign-flip p."""
    lengths = sorted({e["length"] for e in entries if e.get("metric") == "perplexity"})
    rows = []
    for a, b in pairs:
        for length in lengths:
            r = paired_perplexity(entries, a, b, length)
            if r is not None:
                rows.append({"a": a, "b": b, "length": length, **r})
    return rows


def fmt_rate(r: dict | None) -> str:
    """"83% [64, 93] n=24": the rate and its 95% interval in percent, and n."""
    if r is None or not r["n"]:
        return "–"
    return f"{100 * r['recall']:.0f}% [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}] n={r['n']}"


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"
