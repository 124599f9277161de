"""Calibration examples: gold answers, lm-eval tokenisation, disjointness from evaluation."""

import json

import pytest

from shadow_sweep.cache import StageCache
from shadow_sweep.config import PAPER_TASKS
from shadow_sweep.data.calibration import CalibrationExample, encode_example, task_examples
from shadow_sweep.data.tasks import CALIBRATION, EVALUATION, SplitRule, offline_task, split_documents
from shadow_sweep.data.wikitext import load_wikitext


def _key(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_calibration_and_evaluation_documents_are_disjoint(task, data_root):
    parts = split_documents(task, data_root, SplitRule())
    calibration = {_key(d) for d in parts[CALIBRATION]}
    evaluation = {_key(d) for d in parts[EVALUATION]}
    assert calibration and evaluation and not calibration & evaluation


def test_wikitext_calibration_articles_are_not_evaluated(data_root):
    calibration = {d.page for d in load_wikitext(data_root, part=CALIBRATION)}
    evaluation = {d.page for d in load_wikitext(data_root, part=EVALUATION)}
    assert len(calibration) == 12 and len(evaluation) == 50 and not calibration & evaluation


def test_the_split_is_seeded_and_the_seed_matters(data_root):
    first = split_documents("copa", data_root, SplitRule())[CALIBRATION]
    assert first == split_documents("copa", data_root, SplitRule())[CALIBRATION]
    assert first != split_documents("copa", data_root, SplitRule(seed=7))[CALIBRATION]


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_examples_come_from_the_calibration_part_with_the_gold_answer(task, data_root, tmp_path):
    cache = StageCache(tmp_path)
    examples = task_examples(task, 3, 2, 0, data_root, SplitRule(), cache)
    docs = offline_task(task, data_root, SplitRule(), cache, CALIBRATION).test_docs()
    evaluation = {_key(d) for d in split_documents(task, data_root, SplitRule())[EVALUATION]}
    for e in examples:
        doc = docs[e.doc_id]
        assert _key({k: doc[k] for k in doc if k not in ("query", "choices", "gold")}) not in evaluation
        answer = {"piqa": lambda d: [d["sol1"], d["sol2"]][d["label"]],
                  "copa": lambda d: [d["choice1"], d["choice2"]][d["label"]][1:],
                  "openbookqa": lambda d: d["choices"]["text"][d["choices"]["label"].index(d["answerKey"])],
                  "arc_easy": lambda d: d["choices"]["text"][d["choices"]["label"].index(d["answerKey"])],
                  "winogrande": lambda d: d["sentence"][d["sentence"].index("_") + 1:].strip(),
                  "rte": lambda d: ["True", "False"][d["label"]],
                  "hellaswag": lambda d: d["choices"][int(d["label"])]}[task](doc)
        assert e.continuation.strip().endswith(answer.strip())
        assert e.context.count("\n\n") >= 2 or task == "winogrande"  # two demonstrations


def test_encoding_is_lm_evals_and_keeps_the_answer_when_truncating(session_cache):
    from shadow_sweep.evaluation.lm import SparseLM
    from tests.conftest import load_tiny

    lm = SparseLM(load_tiny("tiny-llama", session_cache))
    example = CalibrationExample("t", 0, "Question: why? Answer: ", "because")
    context, answer = lm._encode_pair(example.context, example.continuation)  # lm-eval's own, via SparseLM
    encoded = encode_example(lm.requests, example, max_length=100)
    assert encoded.input_ids == context + answer and encoded.answer_start == len(context)
    short = encode_example(lm.requests, example, max_length=10)
    assert short.input_ids == (context + answer)[-10:] and short.input_ids[short.answer_start:] == answer
    plain = encode_example(lm.requests, CalibrationExample("wikitext", 0, "", "abc"), 100)
    assert plain.input_ids[0] == lm.prefix_token_id and plain.answer_start == 1


def test_examples_are_deterministic(data_root, tmp_path):
    """lm-eval's few-shot sampler is unseeded until told: the same config gives the same prompts."""
    first = task_examples("piqa", 4, 3, 0, data_root, SplitRule(), StageCache(tmp_path))
    assert first == task_examples("piqa", 4, 3, 0, data_root, SplitRule(), StageCache(tmp_path))
    assert first != task_examples("piqa", 4, 3, 1, data_root, SplitRule(), StageCache(tmp_path))
