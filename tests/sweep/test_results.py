"""The results file: concurrent appends stay whole lines, a cut line is skipped, a job's
latest row decides whether it is finished or failed; job keys ignore logger and cache path."""

from concurrent.futures import ThreadPoolExecutor

from shadow_sweep.evaluation.outcomes import task_outcomes, write_outcomes
from shadow_sweep.results import ResultsFile, job_key
from tests.conftest import compose_app


def test_concurrent_appends_and_a_cut_line(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    rows = [{"job_key": f"j{i}", "stage": "evaluate", "predictor": "p", "sparsity": 0.5, "blob": "x" * 5000}
            for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda row: results.append([row]), rows))
    with open(results.path, "a") as sink:
        sink.write('{"job_key": "killed", "stage": "eva')  # a writer killed mid-line
    results.append([{"job_key": "after", "stage": "job", "status": "ok"}])
    assert sorted(r["job_key"] for r in results.rows()) == sorted([r["job_key"] for r in rows] + ["after"])
    assert results.measured_points("j3") == {"evaluate:p:0.5:None"}


def test_latest_job_row_decides(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append([{"job_key": "a", "stage": "job", "status": "failed", "error": "boom"},
                    {"job_key": "b", "stage": "job", "status": "failed", "error": "boom"},
                    {"job_key": "a", "stage": "job", "status": "ok"}])
    assert results.finished("a")["status"] == "ok" and results.finished("b") is None
    assert [r["job_key"] for r in results.failed_jobs()] == ["b"]


def test_job_key_ignores_what_cannot_change_a_result():
    base = job_key(compose_app())
    assert job_key(compose_app(["logger=none", "paths.cache_dir=/elsewhere", "sweep.threads=1"])) == base
    assert job_key(compose_app(["sparsity.level=0.3"])) != base
    assert job_key(compose_app(["criterion=fisher"])) != base


def test_latency_rows_of_a_gpu_run_stay_apart(tmp_path):
    """HF generate (dynamic cache, and static cache compiled), our eager path and CUDA-graph
    replays of one point: four points in the
    results, and the report's latency columns never average graph with eager."""
    from shadow_sweep.report.table import load_rows, summary_table

    results = ResultsFile(tmp_path / "results.jsonl")
    common = {"job_key": "j", "stage": "bench", "criterion": "plainact", "model": "m"}
    rows = [dict(common, path="hf_generate", predictor="dense", update="dense", sparsity=0.0, ms_per_token=21.7),
            dict(common, path="hf_generate_compiled", predictor="dense", update="dense", sparsity=0.0,
                 ms_per_token=6.1, compile_s=41.0),
            dict(common, path="ours", predictor="dense", update="dense", sparsity=0.0, graph=False, ms_per_token=22.4,
                 speedup_vs_dense=1.0),
            dict(common, path="ours", predictor="dense", update="dense", sparsity=0.0, graph=True, ms_per_token=3.68,
                 speedup_vs_dense=1.0),
            dict(common, path="ours", predictor="shadowllm", update="per_sequence", sparsity=0.5, graph=False,
                 ms_per_token=23.8, speedup_vs_dense=22.4 / 23.8),
            dict(common, path="ours", predictor="shadowllm", update="per_sequence", sparsity=0.5, graph=True,
                 ms_per_token=3.59, speedup_vs_dense=3.68 / 3.59)]
    results.append(rows)
    assert len(results.measured_points("j")) == 6
    table = summary_table(load_rows([results.path])).set_index("line")
    assert table.loc["dense", "ms_per_token/dense"] == 22.4 and table.loc["dense", "ms_per_token/dense+graph"] == 3.68
    sparse = table.loc["shadowllm x plainact"]
    assert sparse["ms_per_token/per_sequence"] == 23.8 and sparse["ms_per_token/per_sequence+graph"] == 3.59


def test_outcomes_are_copied_beside_the_results_once_and_read_back(tmp_path):
    entry = tmp_path / "cache" / "evaluation" / "abc123"
    entry.mkdir(parents=True)
    record = {"tasks": {"copa": [{"doc_id": 3, "acc": 1.0, "loglikelihoods": [-1.0, -2.0], "target": 0}]},
              "perplexity_windows": [{"document": 0, "nll": 12.5, "tokens": 4}]}
    source = write_outcomes(record, entry)
    results = ResultsFile(tmp_path / "sweep" / "results.jsonl")
    relative = results.keep_outcomes(source)
    assert relative == "outcomes/abc123.json" and results.outcomes({"outcomes": relative}) == record
    (tmp_path / "sweep" / relative).write_text("{}")  # an existing copy is kept, not rewritten
    assert results.keep_outcomes(source) == relative and results.outcomes({"outcomes": relative}) == {}
    assert results.outcomes({"stage": "bench"}) is None
    assert task_outcomes(record) == {"copa": {3: 1.0}}
