"""Calibration examples: a prompt plus its gold answer, the loss taken on the answer only.

Multiple-choice examples come from the calibration part of each task (see `data.tasks`),
rendered by lm-eval's own task definition: `shots` demonstrations from the calibration
part, the document's context, and the gold choice's continuation. Plain-text examples
are windows of the WikiText-2 calibration articles, the loss on every token.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from shadow_sweep.cache import StageCache
from shadow_sweep.data.tasks import CALIBRATION, SplitRule, offline_task
from shadow_sweep.data.requests import RequestEncoder
from shadow_sweep.data.wikitext import WIKITEXT, load_wikitext


@dataclass(frozen=True)
class CalibrationExample:
    source: str  # task name, or "wikitext"
    doc_id: int  # index of the document within its calibration part
    context: str
    continuation: str  # the loss covers these tokens


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    answer_start: int  # positions >= answer_start hold the answer tokens


def gold_arguments(task, doc: dict, shots: int, doc_id: int) -> tuple[str, str]:
    """(context, continuation) of the request lm-eval builds for the gold choice."""
    requests = task.construct_requests(doc=doc, ctx=task.fewshot_context(doc, shots), metadata=(task.config.task, doc_id, 1))
    if task.multiple_input:  # winogrande: choices are contexts, doc_to_text gives the gold index
        gold = task.doc_to_text(doc)
    else:
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = task.doc_to_choice(doc).index(gold)
    return requests[gold].args


def task_examples(task_name: str, count: int, shots: int, seed: int, data_root: str | Path, rule: SplitRule,
                  cache: StageCache, include_path: list[str] = ()) -> list[CalibrationExample]:
    task = offline_task(task_name, data_root, rule, cache, CALIBRATION, include_path)
    task.set_fewshot_seed(seed)  # lm-eval's sampler is unseeded until told
    docs = list(task.test_docs())
    chosen = sorted(random.Random(f"{seed}:{task_name}").sample(range(len(docs)), min(count, len(docs))))
    return [CalibrationExample(task_name, i, *gold_arguments(task, docs[i], shots, i)) for i in chosen]


def plain_text_examples(tokenizer: PreTrainedTokenizerBase, count: int, length: int, data_root: str | Path,
                        rule: SplitRule) -> list[CalibrationExample]:
    """Consecutive windows of `length` tokens over the WikiText-2 calibration articles."""
    examples = []
    for doc_id, doc in enumerate(load_wikitext(data_root, part=CALIBRATION, rule=rule)):
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        for start in range(0, len(ids) - length + 1, length):
            if len(examples) == count:
                return examples
            examples.append(CalibrationExample(WIKITEXT, doc_id, "", tokenizer.decode(ids[start:start + length])))
    if len(examples) < count:
        raise ValueError(f"calibration.plain_text_examples={count} exceeds the {len(examples)} windows of "
                         f"{length} tokens in the WikiText-2 calibration articles")
    return examples


def encode_example(requests: RequestEncoder, example: CalibrationExample, max_length: int) -> EncodedExample:
    """Tokenise as lm-eval does for a loglikelihood request, then truncate from the left to
    `max_length` keeping the answer."""
    context, answer = requests.encode_request(example.context, example.continuation)
    ids = (context + answer)[-max_length:]
    return EncodedExample(ids, max(1, len(ids) - len(answer)))
