"""An evaluation's prompts: every one with needles and values of its own across tasks, lengths and depths, the same
for every model (a pure function of the grid and the seed), and each cell's per-prompt results, what pairs two
models."""

from __future__ import annotations

import pytest
from torch import nn

import hybridize.metrics.recall as recall
from hybridize.data.synthetic import WORDS, FillerTokens
from hybridize.data.tokenizer import train_bpe_tokenizer
from hybridize.metrics.recall import PROMPT_SEED_BASE, build_cells, evaluate_cells, needle_identity

TEXTS = [f"Document {i}. The river runs past the old mill, and the miller counts his sacks of grain twice a day. "
         "Nobody in the village remembers when the bridge was built." for i in range(40)]
TASKS = ["niah_single_2", "niah_multikey_1", "passkey", "mqar"]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS + [" ".join(WORDS)] * 3, vocab_size=400)


@pytest.fixture(scope="module")
def filler(tok):
    return FillerTokens.build(tok, TEXTS)


def test_no_two_prompts_share_a_needle_or_value_across_the_grid(tok, filler):
    cells = build_cells(TASKS, [400, 600], [0.0, 0.5, None], samples=6, seed=3, tokenizer=tok, filler=filler)
    assert len(cells) == 4 * 2 * 3 and all(len(c.examples) == 6 for c in cells)
    seen = {}
    for cell in cells:
        for ex in cell.examples:
            assert len(ex.prompt_ids) == cell.length and ex.seed >= PROMPT_SEED_BASE
            for key in needle_identity(ex, tok):
                assert key not in seen, f"{key} in {cell.task}@{cell.length} and in {seen[key]}"
                seen[key] = f"{cell.task}@{cell.length}"
    # MQAR's values come from 900 numbers and may repeat; its needles (key and value) never do
    assert not any(k[0] == "value" for c in cells if c.task == "mqar" for ex in c.examples
                   for k in needle_identity(ex, tok))
    # every model answers the same prompts: rebuilt, the cells are the same; another seed gives others
    again = build_cells(TASKS, [400, 600], [0.0, 0.5, None], samples=6, seed=3, tokenizer=tok, filler=filler)
    assert [c.fingerprint() for c in again] == [c.fingerprint() for c in cells]
    other = build_cells(TASKS, [400, 600], [0.0, 0.5, None], samples=6, seed=4, tokenizer=tok, filler=filler)
    assert not {c.fingerprint() for c in other} & {c.fingerprint() for c in cells}


def test_the_same_needles_in_every_cell_when_asked(tok, filler):
    cells = build_cells(["passkey"], [400, 600], [0.0, 1.0], samples=3, seed=0, tokenizer=tok, filler=filler,
                        distinct=False)
    values = [[ex.values for ex in c.examples] for c in cells]
    assert all(v == values[0] for v in values) and len({tuple(v) for v in values[0]}) == 3


def test_a_pool_too_small_for_distinct_prompts_is_refused(tok, filler, monkeypatch):
    real = recall.generate
    monkeypatch.setattr(recall, "generate", lambda cfg, seed, *a: real(cfg, seed % 2, *a))  # two prompts in all
    with pytest.raises(ValueError, match="task 'passkey' gave only 2 prompts with needles and values of their own"):
        build_cells(["passkey"], [400], [0.5], samples=3, seed=0, tokenizer=tok, filler=filler)


class _EveryOther(nn.Module):
    """Answers the prompts of even seed right and the others with the first answer token repeated."""

    def __init__(self, cells, pad_id):
        super().__init__()
        self.weight = nn.Parameter(recall.torch.zeros(1))
        self.answers = {tuple(ex.prompt_ids): ex.answer_ids if ex.seed % 2 == 0 else [ex.answer_ids[0]] * 3
                        for c in cells for ex in c.examples}
        self.pad_id = pad_id

    def generate(self, input_ids, attention_mask, generation_config):
        n = generation_config.max_new_tokens
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            new = self.answers[tuple(t for t, m in zip(ids, mask) if m)][:n]
            rows.append(ids + new + [self.pad_id] * (n - len(new)))
        return recall.torch.tensor(rows)


def test_each_cell_reports_its_counts_and_per_prompt_results(tok, filler):
    cells = build_cells(["niah_single_2", "passkey"], [400], [0.25, 0.75], samples=5, seed=1, tokenizer=tok,
                        filler=filler)
    rows, preds = evaluate_cells(_EveryOther(cells, tok.pad_token_id), tok, cells, progress=False)
    for row, cell in zip(rows, cells):
        expected = "".join("1" if ex.seed % 2 == 0 else "0" for ex in cell.examples)
        assert row["correct"] == expected and row["successes"] == expected.count("1") and row["samples"] == 5
        assert row["exact_match"] == pytest.approx(row["successes"] / 5) and row["prompts"] == cell.fingerprint()
    assert [p["prompt"] for p in preds[:5]] == [0, 1, 2, 3, 4]
    assert [p["exact_match"] for p in preds[:5]] == [float(c == "1") for c in rows[0]["correct"]]
