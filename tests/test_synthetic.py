"""Synthetic recall tasks: deterministic, exact lengths, answers exactly where the metadata says, training labels."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing

from hybridize.data.synthetic import (
    IGNORE_INDEX, TASKS, WORDS, FillerTokens, generate, generate_examples, suite_tasks, task_config,
)
from hybridize.data.tokenizer import train_bpe_tokenizer

FILLER = [
    f"Document {i}. The river runs past the old mill, and the miller counts his sacks of grain twice a day. "
    f"Nobody in the village remembers when the bridge was built; some say it was the year of the great flood. "
    f"Children play near the water while the baker sells bread to travellers on their way north."
    for i in range(40)
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(FILLER + [" ".join(WORDS)] * 3, vocab_size=600)


@pytest.fixture(scope="module")
def filler(tok):
    return FillerTokens.build(tok, FILLER)


def _length(name: str) -> int:
    return 4000 if name == "passkey_flashmorph" else 700


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0, None])
def test_examples_have_exact_length_labels_and_values_where_metadata_says(tok, filler, name, depth):
    length = _length(name)
    ex = generate(task_config(name, length=length, depth=depth), seed=3, tokenizer=tok, filler=filler)
    assert ex.context_length == len(ex.prompt_ids) == length
    assert ex.input_ids[:length] == ex.prompt_ids
    answer_ids = tok.encode(" " + ex.answer, add_special_tokens=False)
    assert ex.input_ids[length:] == answer_ids == ex.answer_ids
    assert ex.labels == [IGNORE_INDEX] * length + answer_ids
    assert len(ex.values) == len(ex.value_spans) >= 1
    for value, (a, b) in zip(ex.values, ex.value_spans):
        assert b <= length
        assert tok.decode(ex.input_ids[a:b]) == " " + value
        assert value in ex.answer
        assert any(s <= a and b <= e for s, e in ex.needle_spans), "a value outside every needle"
    assert len(ex.needle_depths) == len(ex.needle_spans)
    assert all(0.0 <= d <= 1.0 for d in ex.needle_depths)
    assert ex.depth == depth
    if depth is not None:  # the first queried needle sits at the requested depth, up to snapping to a word start
        assert abs(ex.needle_depths[0] - depth) < 0.02 + 8 / length, (ex.needle_depths[0], depth)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_pure_functions_of_config_and_seed(tok, filler, name):
    cfg = task_config(name, length=_length(name), depth=0.5)
    a = generate(cfg, seed=11, tokenizer=tok, filler=filler)
    b = generate(cfg, seed=11, tokenizer=tok, filler=FILLER)  # documents instead of the prebuilt tokens
    c = generate(cfg, seed=12, tokenizer=tok, filler=filler)
    assert a.to_dict() == b.to_dict()
    assert a.values != c.values and a.prompt_ids != c.prompt_ids


def test_depth_zero_and_one_put_the_needle_at_the_top_and_bottom(tok, filler):
    for name in ("niah_single_2", "passkey"):
        top = generate(task_config(name, length=500, depth=0.0), 0, tok, filler)
        bottom = generate(task_config(name, length=500, depth=1.0), 0, tok, filler)
        head = len(tok.encode(tok.decode(top.prompt_ids).split("\n")[0] + "\n", add_special_tokens=False))
        assert top.needle_spans[0][0] == head  # right after the instruction line
        question = tok.decode(bottom.prompt_ids[bottom.needle_spans[0][1]:])
        assert question.startswith("\nWhat is the"), question  # right before the question
        assert top.values == bottom.values  # one seed: same needle at every depth


def test_noise_haystack_is_rulers_repeated_sentences(tok, filler):
    text = tok.decode(generate(task_config("niah_single_1", length=400, depth=0.5), 0, tok, filler).prompt_ids)
    assert "The grass is green. The sky is blue." in text and "miller" not in text
    text = tok.decode(generate(task_config("niah_single_2", length=400, depth=0.5), 0, tok, filler).prompt_ids)
    assert "miller" in text and "The grass is green" not in text


def test_multi_value_answers_follow_the_documented_order(tok, filler):
    mv = generate(task_config("niah_multivalue", length=900), 5, tok, filler)
    assert len(mv.values) == 4 and mv.answer == ", ".join(mv.values)
    assert [s for s, _ in mv.value_spans] == sorted(s for s, _ in mv.value_spans)  # order of appearance
    mq = generate(task_config("niah_multiquery", length=900), 5, tok, filler)
    text = tok.decode(mq.prompt_ids)
    keys = text.rsplit("What are all the special magic numbers for ", 1)[1].split(" mentioned")[0]
    keys = keys.replace(" and ", ", ").split(", ")
    assert len(keys) == 4
    for key, (a, b), value in zip(keys, mq.value_spans, mq.values):  # the values of the asked keys, in asked order
        assert tok.decode(mq.input_ids[_needle_start(mq, a):a]).endswith(f"for {key} is:"), key
    allpk = generate(task_config("passkey", length=900, num_passkeys=3, query="all"), 5, tok, filler)
    assert len(allpk.values) == 3 and allpk.answer == "; ".join(allpk.values)
    assert [s for s, _ in allpk.value_spans] == sorted(s for s, _ in allpk.value_spans)
    mqar = generate(task_config("mqar", length=600, num_queries=5), 5, tok, filler)
    asked = tok.decode(mqar.prompt_ids).rsplit("in order: ", 1)[1].split(". The values")[0].split("; ")
    for key, (s, e), value in zip(asked, mqar.needle_spans, mqar.values):
        assert tok.decode(mqar.input_ids[s:e]) == f"{key}: {value}\n"


def _needle_start(ex, value_start: int) -> int:
    return next(s for s, e in ex.needle_spans if s <= value_start < e)


def test_flashmorph_passkey_training_data(tok, filler):
    cfg = task_config("passkey_flashmorph", length=6000)
    assert (cfg.num_passkeys, cfg.words_per_passkey, cfg.depth_candidates, cfg.query) == (10, 32, 1000, "one")
    examples = generate_examples(cfg, n=3, seed=0, tokenizer=tok, filler=filler)
    for ex in examples:
        assert len(ex.needle_spans) == 10 and len(ex.values) == 1
        assert len(ex.values[0].split()) == 32 and set(ex.values[0].split()) <= set(WORDS)
        assert len(set(ex.needle_depths)) == 10
        spans = sorted(ex.needle_spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])), "needles overlap"
        asked = tok.decode(ex.prompt_ids).rsplit("What is the pass key ", 1)[1].split("?")[0]
        (a, _), = ex.value_spans
        assert tok.decode(ex.input_ids[_needle_start(ex, a):a]) == f" The pass key {asked} is:"
        trained = [t for t in ex.labels if t != IGNORE_INDEX]
        assert tok.decode(trained) == " " + ex.values[0] and ex.labels[-len(trained):] == trained
    assert len({ex.values[0] for ex in examples}) == 3


def test_a_tokenizer_that_adds_bos_gets_it_once_and_lengths_stay_exact(filler):
    tok = train_bpe_tokenizer(FILLER + [" ".join(WORDS)] * 3, vocab_size=600)
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert tok.encode("a")[0] == bos
    for name in ("niah_single_1", "passkey", "mqar"):
        ex = generate(task_config(name, length=500), 0, tok, FILLER)
        assert ex.prompt_ids[0] == bos and ex.prompt_ids.count(bos) == 1 and ex.context_length == 500


def test_errors_name_the_field_and_the_allowed_values(tok, filler):
    with pytest.raises(ValueError, match="Unknown synthetic task 'niah_single_9'. Available: .*niah_single_1"):
        task_config("niah_single_9")
    with pytest.raises(ValueError, match="depth must be in \\[0, 1\\]"):
        task_config("passkey", depth=1.5)
    with pytest.raises(ValueError, match="length must be a positive number of tokens"):
        task_config("mqar", length=0)
    with pytest.raises(ValueError, match="has no option 'num_keys'; allowed"):
        task_config("passkey", num_keys=3)
    with pytest.raises(ValueError, match="query must be one of \\['one', 'all'\\]"):
        task_config("passkey", query="some")
    with pytest.raises(ValueError, match="length=40 is too short for task 'niah_single_3'.*use length >= "):
        generate(task_config("niah_single_3", length=40), 0, tok, filler)
    with pytest.raises(ValueError, match="length=30 is too short for task 'mqar'"):
        generate(task_config("mqar", length=30), 0, tok, filler)
    with pytest.raises(ValueError, match="filler has no text"):
        FillerTokens.build(tok, ["", "  "])


def test_suites_run_rulers_niah_set_passkey_and_mqar():
    assert suite_tasks("niah") == ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1"]
    assert suite_tasks("passkey") == ["passkey"] and suite_tasks("mqar") == ["mqar"]
