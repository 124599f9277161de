"""The lm-eval model: equal to lm-eval's HFLM when dense, batch-invariant with masks, and
offline requests equal to the built-in tasks' prompts."""

import bz2

import numpy as np
import pytest
import torch
from lm_eval.models.huggingface import HFLM

from shadow_sweep.cache import StageCache
from shadow_sweep.config import EvalConfig, MaskUpdate, Prefill
from shadow_sweep.data.tasks import EVALUATION, SplitRule, offline_task, split_documents
from shadow_sweep.config import ConfigError
from shadow_sweep.evaluation.harness import build_tasks, check_tasks, task_accuracy
from shadow_sweep.evaluation.lm import SparseLM
from tests.conftest import load_tiny
from tests.selectors.helpers import runtime_for


def _requests(task, n=6, shots=0):
    task.set_fewshot_seed(1234)
    requests = []
    for doc_id, doc in enumerate(list(task.test_docs())[:n]):
        requests += task.construct_requests(doc=doc, ctx=task.fewshot_context(doc, shots), metadata=("t", doc_id, 1))
    return requests


@pytest.fixture(scope="module")
def copa(data_root, tmp_path_factory):
    return offline_task("copa", data_root, SplitRule(), StageCache(tmp_path_factory.mktemp("tasks")), EVALUATION)


def test_dense_scores_equal_lm_evals_own_hflm(copa, session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    requests = _requests(copa, shots=1)
    ours = SparseLM(loaded, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    reference = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1).loglikelihood(
        requests, disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, reference):
        assert ll == pytest.approx(ref_ll, rel=1e-5, abs=1e-4) and greedy == ref_greedy


def _shadow_runtime(loaded, update):
    return runtime_for(loaded, "shadowllm", ranking="global", update=update)


@pytest.fixture
def tiny_llama(session_cache):
    return load_tiny("tiny-llama", session_cache)


@pytest.mark.parametrize("update", list(MaskUpdate))
@pytest.mark.parametrize("prefill", list(Prefill))
def test_batch_of_eight_equals_batch_of_one_with_masks(copa, tiny_llama, update, prefill):
    runtime = _shadow_runtime(tiny_llama, update)
    requests = _requests(copa, n=8)
    with runtime:
        batched = SparseLM(tiny_llama, 8, runtime=runtime, prefill=prefill).loglikelihood(requests, True)
        single = SparseLM(tiny_llama, 1, runtime=runtime, prefill=prefill).loglikelihood(requests, True)
    for (a, ga), (b, gb) in zip(batched, single):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4) and ga == gb


@pytest.mark.parametrize("update", list(MaskUpdate))
def test_dense_prefill_scores_a_one_token_continuation_exactly_dense(copa, tiny_llama, update):
    lm = SparseLM(tiny_llama, 4)
    first_tokens = [(None, c, t[:1]) for c, t in (lm.requests.encode_request(*r.args) for r in _requests(copa, n=6))]
    dense = lm._loglikelihood_tokens(first_tokens)
    with _shadow_runtime(tiny_llama, update) as runtime:
        for prefill, expect_dense in ((Prefill.dense, True), (Prefill.sparse, False)):
            scores = SparseLM(tiny_llama, 4, runtime=runtime, prefill=prefill)._loglikelihood_tokens(first_tokens)
            same = all(a == pytest.approx(b, rel=1e-5, abs=1e-5) for (a, _), (b, _) in zip(scores, dense))
            assert same == expect_dense, prefill


def test_per_sequence_masks_differ_between_requests_and_dense_prefill_shares_them(copa, tiny_llama,
                                                                                   monkeypatch):
    runtime = _shadow_runtime(tiny_llama, MaskUpdate.per_sequence)
    seen = []
    original = runtime.masks.set
    monkeypatch.setattr(runtime.masks, "set", lambda h=None, n=None: (seen.append(n.clone()), original(h, n)))
    requests = _requests(copa, n=3)  # 2 choices each
    with runtime:
        SparseLM(tiny_llama, 1, runtime=runtime).loglikelihood(requests, True)
        per_input = torch.cat(seen)
        seen.clear()
        SparseLM(tiny_llama, 1, runtime=runtime, prefill=Prefill.dense).loglikelihood(requests, True)
        per_context = torch.cat(seen)
    assert len(per_input) == 6 and len({tuple(m.flatten().tolist()) for m in per_input}) == 6
    # the two choices of one question share the context's mask; different questions differ
    assert len({tuple(m.flatten().tolist()) for m in per_context}) == 3


def test_offline_requests_render_the_builtin_prompts(data_root, tmp_path):
    cache, rule = StageCache(tmp_path), SplitRule()
    expected = {
        "piqa": lambda d: (f"Question: {d['goal']}\nAnswer:", " " + [d["sol1"], d["sol2"]][0]),
        "arc_easy": lambda d: (f"Question: {d['question']}\nAnswer:", " " + d["choices"]["text"][0]),
        "openbookqa": lambda d: (d["question_stem"], " " + d["choices"]["text"][0]),
        "rte": lambda d: (f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer:", " True"),
        "copa": lambda d: (d["premise"].strip()[:-1] + {"cause": " because", "effect": " therefore"}[d["question"]],
                           "  " + d["choice1"][0].lower() + d["choice1"][1:]),
        "winogrande": lambda d: (d["sentence"][:d["sentence"].index("_")] + d["option1"],
                                 " " + d["sentence"][d["sentence"].index("_") + 1:].strip()),
    }
    for name, render in expected.items():
        task = offline_task(name, data_root, rule, cache, EVALUATION)
        docs = split_documents(name, data_root, rule)[EVALUATION][:3]
        requests = _requests(task, n=3)
        firsts = [r for r in requests if r.idx == 0]
        assert [r.args for r in firsts] == [render(d) for d in docs], name


def test_hellaswag_query_capitalises_the_trailing_fragment_as_lm_eval_does(data_root, tmp_path):
    lines = bz2.decompress((data_root / "hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode().split("\n")
    task = offline_task("hellaswag", data_root, SplitRule(0.0), StageCache(tmp_path), EVALUATION)  # all evaluated
    doc = task.test_docs()[0]
    assert lines[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert doc["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert doc["choices"][int(doc["label"])] == lines[2 + int(lines[1])]


def test_unavailable_task_fails_naming_it_and_where_its_data_was_looked_for(monkeypatch, data_root):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"eval.tasks: task 'boolq'.*could not be read.*paths.data_root>/aps/super_glue"):
        check_tasks(["copa", "boolq"], [], data_root, [])
    with pytest.raises(ConfigError, match=r"calibration.tasks: task 'no_such_task' is neither an offline task"):
        check_tasks([], ["no_such_task"], data_root, [])
    check_tasks(["copa", "piqa"], ["arc_easy"], data_root, [])


def test_task_accuracy_reports_lm_evals_metrics_with_stderr_and_per_document_outcomes(data_root, tmp_path,
                                                                                     session_cache):
    loaded = load_tiny("tiny-opt", session_cache)
    tasks = build_tasks(["copa", "arc_easy"], data_root, SplitRule(), StageCache(tmp_path))
    results = task_accuracy(SparseLM(loaded, 4), tasks, EvalConfig(tasks=["copa", "arc_easy"], limit=6))
    assert set(results.metrics) == set(results.outcomes) == {"copa", "arc_easy"}
    assert "acc_norm_stderr" in results.metrics["arc_easy"]
    for task, metrics in results.metrics.items():
        outcomes = results.outcomes[task]
        acc = np.array([o["acc"] for o in outcomes])
        assert metrics["documents"] == len(outcomes) == 6 and len({o["doc_id"] for o in outcomes}) == 6
        assert metrics["acc"] == pytest.approx(acc.mean())
        assert metrics["acc_stderr"] == pytest.approx(acc.std(ddof=1) / np.sqrt(len(acc)))
    for o in results.outcomes["arc_easy"]:  # acc is the argmax of the kept log-likelihoods (gold: an index)
        assert o["acc"] == float(int(np.argmax(o["loglikelihoods"])) == o["target"])


class _Request:
    def __init__(self, context: str, max_tokens: int):
        self.args = (context, {"until": ["\n\n\n"], "max_gen_toks": max_tokens})


@pytest.mark.parametrize("update, calls", [(MaskUpdate.per_sequence, 1), (MaskUpdate.per_token, 6)])
def test_generation_follows_the_update_policy(tiny_llama, update, calls):
    """per_sequence: the prompt's forward chooses the masks, kept for every new token (one
    network call); per_token: one call per forward (the prompt, then each new token)."""
    runtime = _shadow_runtime(tiny_llama, update)
    with runtime:
        text = SparseLM(tiny_llama, 1, runtime=runtime).generate_until([_Request("The cat sat on", 6)], True)
    assert runtime.network_calls == calls and isinstance(text[0], str)
    assert not runtime.holding
