"""Tasks by configuration: the user's own lm-eval YAML over a jsonl under the data root
(eval.include_path), and a built-in lm-eval task whose hub data set was copied to the data root."""

import json
import shutil
from pathlib import Path

import pytest

from shadow_sweep.cache import StageCache
from shadow_sweep.config import ConfigError
from shadow_sweep.data.calibration import task_examples
from shadow_sweep.data.task_sources import dataset_arguments
from shadow_sweep.data.tasks import CALIBRATION, EVALUATION, SplitRule, offline_task, split_documents
from shadow_sweep.evaluation.harness import check_tasks
from shadow_sweep.sweep.job import run_job
from tests.conftest import compose_app

COLOURS = ["red", "green", "blue", "yellow"]
TASK_YAML = """\
task: sky_colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: colours/test.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GENERATIVE_YAML = """\
task: sky_free_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: colours/test.jsonl
output_type: generate_until
test_split: test
doc_to_text: "{{question}}"
doc_to_target: "{{choices[label]}}"
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def user_task(tmp_path) -> tuple[Path, Path]:
    """(data root holding colours/test.jsonl, task folder holding the YAMLs)."""
    root = tmp_path / "data"
    (root / "colours").mkdir(parents=True)
    docs = [{"question": f"What colour is thing number {i}?", "choices": COLOURS, "label": i % 4} for i in range(50)]
    (root / "colours" / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "sky_colours.yaml").write_text(TASK_YAML)
    (tasks / "sky_free_text.yaml").write_text(GENERATIVE_YAML)
    return root, tasks


def test_relative_data_files_resolve_against_the_data_root(tmp_path):
    arguments = dataset_arguments({"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "a/b.jsonl"}}},
                                  tmp_path)
    assert arguments == {"path": "json", "name": None, "data_files": {"test": str(tmp_path / "a/b.jsonl")}}


def test_a_user_task_splits_disjointly_and_calibrates_from_its_own_part(user_task, tmp_path):
    root, folder = user_task
    parts = split_documents("sky_colours", root, SplitRule(0.2, 3), [str(folder)])
    questions = {part: {d["question"] for d in docs} for part, docs in parts.items()}
    assert len(questions[CALIBRATION]) == 10 and len(questions[EVALUATION]) == 40
    assert not questions[CALIBRATION] & questions[EVALUATION]
    cache = StageCache(tmp_path / "cache")
    task = offline_task("sky_colours", root, SplitRule(0.2, 3), cache, EVALUATION, [str(folder)])
    assert {d["question"] for d in task.test_docs()} == questions[EVALUATION]
    examples = task_examples("sky_colours", 4, 0, 0, root, SplitRule(0.2, 3), cache, [str(folder)])
    for example in examples:
        assert example.context.split("Question: ")[1].split("\n")[0] in questions[CALIBRATION]
        assert example.continuation == " " + COLOURS[int(example.context.split("number ")[1].split("?")[0]) % 4]


def test_generative_tasks_evaluate_but_do_not_calibrate(user_task):
    root, folder = user_task
    check_tasks(["sky_free_text", "sky_colours"], ["sky_colours"], root, [str(folder)])
    with pytest.raises(ConfigError, match=r"calibration.tasks: task 'sky_free_text' has output_type "
                                          r"'generate_until'; calibration needs multiple_choice"):
        check_tasks([], ["sky_free_text"], root, [str(folder)])


def test_a_job_calibrates_and_evaluates_on_a_user_task(user_task, tmp_path):
    root, folder = user_task
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={root}", f"paths.cache_dir={tmp_path / 'cache'}",
                       "logger=none", f"eval.include_path=[{folder}]", "eval.tasks=[sky_colours]", "eval.limit=8",
                       "calibration.tasks=[sky_colours]", "calibration.examples_per_task=4",
                       "calibration.max_length=64", "predictor=static", "stages.perplexity=false",
                       "stages.bench=false"])
    table = run_job(cfg, tmp_path / "run")
    assert list(table["predictor"]) == ["dense", "static", "teal"]  # teal: calibrated on the user task too
    assert all(0 <= acc <= 1 for acc in table["acc/sky_colours"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert rows[-1]["status"] == "ok" and rows[-1]["traces_examples"] == 4


def test_a_builtin_task_runs_offline_from_a_copy_of_its_hub_data_set(data_root, tmp_path, monkeypatch):
    """lm-eval's `copa` reads the hub data set `aps/super_glue` (config copa): a copy of that
    repository's copa files under <data_root>/aps/super_glue serves it without our converter."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    snapshot = tmp_path / "data" / "aps" / "super_glue" / "copa"
    snapshot.mkdir(parents=True)
    shutil.copy(data_root / "superglue" / "COPA" / "val.jsonl", snapshot / "validation-00000-of-00001.jsonl")
    (snapshot.parent / "README.md").write_text(
        "---\nconfigs:\n- config_name: copa\n  data_files:\n  - split: validation\n"
        "    path: copa/validation-*.jsonl\n---\n")
    from shadow_sweep.data.task_sources import indexed_source

    source = indexed_source("copa", tmp_path / "data", [])
    scored, _ = source.documents()
    assert len(scored) == 100 and {"premise", "choice1", "choice2", "question", "label"} <= set(scored[0])


def test_the_shipped_example_task_reads_the_data_root(data_root, tmp_path):
    folder = str(Path(__file__).resolve().parents[2] / "examples" / "tasks")
    check_tasks(["copa_plain"], ["copa_plain"], data_root, [folder])
    task = offline_task("copa_plain", data_root, SplitRule(), StageCache(tmp_path), EVALUATION, [folder])
    doc = task.test_docs()[0]
    choices = task.doc_to_choice(doc)
    assert task.doc_to_text(doc) == doc["premise"][:-1] + (" because" if doc["question"] == "cause" else " so")
    assert choices[task.doc_to_target(doc)] == doc[f"choice{doc['label'] + 1}"][0].lower() + \
        doc[f"choice{doc['label'] + 1}"][1:]
    assert len(task.test_docs()) == 80  # 100 validation documents, 20% calibrate


def test_task_definitions_key_the_stages_that_use_them(user_task):
    from shadow_sweep.data.task_sources import definitions_digest

    root, folder = user_task
    assert definitions_digest(["copa", "piqa"], [str(folder)]) is None  # converted tasks only
    assert definitions_digest(["sky_colours"], []) is None
    before = definitions_digest(["copa", "sky_colours"], [str(folder)])
    (folder / "sky_colours.yaml").write_text(TASK_YAML.replace("Answer:", "A:"))
    assert definitions_digest(["copa", "sky_colours"], [str(folder)]) not in (None, before)


def test_every_metric_of_a_loglikelihood_task_reaches_the_row(tmp_path):
    """LAMBADA's kind of task: a loglikelihood task whose metric_list has perplexity and acc: both
    (with lm-eval's stderr where it gives one) are in the row, the report and the W&B metrics."""
    from shadow_sweep.report.table import summary_table
    from shadow_sweep.sweep.tracking import point_metrics

    root = tmp_path / "data"
    (root / "words").mkdir(parents=True)
    lines = [{"text": f"The {colour} ball is", "target": f" {colour}"} for colour in COLOURS * 3]
    (root / "words" / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "last_word.yaml").write_text(
        "task: last_word\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: words/test.jsonl\n"
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: '{{text}}'\ndoc_to_target: '{{target}}'\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={root}", f"paths.cache_dir={tmp_path / 'cache'}",
                       "logger=none", f"eval.include_path={folder}", "eval.tasks=[last_word]", "predictor=teal",
                       "sparsity.rule=top_k", "eval.baseline_selectors=[]", "stages.perplexity=false",
                       "stages.bench=false", "stages.trace=false"])
    run_job(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if r["stage"] == "evaluate"]
    for row in evaluated:
        assert row["perplexity/last_word"] > 1 and 0 <= row["acc/last_word"] <= 1 and "acc_stderr/last_word" in row
        assert {"perplexity/last_word", "acc/last_word"} <= set(point_metrics(row))
    import pandas as pd

    assert "perplexity/last_word" in summary_table(pd.DataFrame(rows)).columns
