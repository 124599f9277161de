"""Offline task files -> documents in the schema of each task's hub data set.

lm-eval's own task definitions (prompts, choices, metrics) then run on these documents
unchanged, so offline requests equal the built-in task's requests for the same items.
Each reader returns the documents of one file; `TASK_FILES` says which file is the
evaluation split and which (if any) is a separate calibration split.
"""

import bz2
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from shadow_sweep.data.root import data_file

Reader = Callable[[Path], list[dict]]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labels(path: Path) -> list[str]:
    return path.read_text().split()


def read_piqa(root: Path) -> list[dict]:
    docs = _jsonl(data_file(root, "piqa/dev.jsonl"))
    labels = _labels(data_file(root, "piqa/dev-labels.lst"))
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(y)} for d, y in zip(docs, labels)]


def read_copa(root: Path) -> list[dict]:
    return _jsonl(data_file(root, "superglue/COPA/val.jsonl"))


def read_rte(root: Path) -> list[dict]:
    """SuperGLUE RTE validation as GLUE's `rte` schema (the same 277 items): label 0 = entailment."""
    return [{"sentence1": d["premise"], "sentence2": d["hypothesis"], "idx": d["idx"],
             "label": 0 if d["label"] == "entailment" else 1} for d in _jsonl(data_file(root, "superglue/RTE/val.jsonl"))]


def read_winogrande(root: Path) -> list[dict]:
    return [{k: d[k] for k in ("sentence", "option1", "option2", "answer")}
            for d in _jsonl(data_file(root, "winogrande/dev.jsonl"))]


_SENTENCE_END = re.compile(r"[.!?] ")


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b): ctx_b is the trailing fragment after the last sentence end when it has
    no capital letter (ActivityNet items: "... on a roof. he"), else empty (WikiHow items,
    whose context is all ctx_a). lm-eval capitalises ctx_b (`str.capitalize`), which only
    differs from the file's text when the fragment has no capitals: the cases taken here."""
    ends = list(_SENTENCE_END.finditer(ctx))
    if ends:
        fragment = ctx[ends[-1].end():]
        if fragment and fragment == fragment.lower():
            return ctx[:ends[-1].start() + 1], fragment
    return ctx, ""


def read_hellaswag(root: Path) -> list[dict]:
    lines = bz2.decompress(data_file(root, "hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode().split("\n")
    docs = []
    for start in range(0, len(lines) - 5, 6):
        head, label, *endings = lines[start:start + 6]
        activity_label, ctx = head.split(": ", 1)
        ctx_a, ctx_b = split_hellaswag_context(ctx)
        docs.append({"activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings,
                     "label": label})
    return docs


def _arc_like(d: dict, question_key: str) -> dict:
    choices = d["question"]["choices"]
    return {"id": d["id"], question_key: d["question"]["stem"], "answerKey": d["answerKey"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}}


def read_arc_easy_test(root: Path) -> list[dict]:
    return [_arc_like(d, "question") for d in _jsonl(data_file(root, "arc/ARC-Easy-Test.jsonl"))]


def read_arc_easy_dev(root: Path) -> list[dict]:
    return [_arc_like(d, "question") for d in _jsonl(data_file(root, "arc/ARC-Easy-Dev.jsonl"))]


def read_openbookqa_test(root: Path) -> list[dict]:
    return [_arc_like(d, "question_stem") for d in _jsonl(data_file(root, "openbookqa/test.jsonl"))]


_OBQA_CHOICE = re.compile(r"\(([A-D])\) ")


def read_openbookqa_dev(root: Path) -> list[dict]:
    """dev.tsv: `ID, Question Stem, Choices "(A) .. (B) ..", Complete Question, Answer Key`."""
    rows = data_file(root, "openbookqa/dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    docs = []
    for row in rows:
        qid, stem, choices, _complete, answer = row.split("\t")
        parts = _OBQA_CHOICE.split(choices)[1:]  # [label, text, label, text, ...]
        docs.append({"id": qid, "question_stem": stem, "answerKey": answer.strip(),
                     "choices": {"label": parts[0::2], "text": [t.strip() for t in parts[1::2]]}})
    return docs


@dataclass(frozen=True)
class TaskFiles:
    lm_eval_yaml: str  # the built-in task definition, relative to lm_eval/tasks
    evaluation: Reader  # the split lm-eval evaluates
    calibration: Optional[Reader] = None  # a separate split; None = a seeded part of `evaluation`


TASK_FILES: dict[str, TaskFiles] = {
    "piqa": TaskFiles("piqa/piqa.yaml", read_piqa),
    "copa": TaskFiles("super_glue/copa/default.yaml", read_copa),
    "rte": TaskFiles("glue/rte/default.yaml", read_rte),
    "winogrande": TaskFiles("winogrande/default.yaml", read_winogrande),
    "hellaswag": TaskFiles("hellaswag/hellaswag.yaml", read_hellaswag),
    "arc_easy": TaskFiles("arc/arc_easy.yaml", read_arc_easy_test, read_arc_easy_dev),
    "openbookqa": TaskFiles("openbookqa/openbookqa.yaml", read_openbookqa_test, read_openbookqa_dev),
}
