"""Nothing measured is lost or silently wrong: a results file that cannot be written stops a job
(and a sweep) before any work; a held lock fails in bounded time naming it; a damaged line is
named, and the point it held counts as not measured, so a relaunch measures it again."""

import subprocess
import sys
import time

import pytest
from filelock import FileLock

from shadow_sweep.results import ResultsError, ResultsFile
from shadow_sweep.sweep import job as job_module
from shadow_sweep.sweep.job import run_job
from tests.conftest import REPO, compose_app


def quick_job(tmp_path, data_root, *overrides):
    """A job of a few seconds on a tiny model: teal at 50%, no fit, one WikiText-2 article."""
    return compose_app(["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
                        "logger=none", "predictor=teal", "sparsity.rule=top_k", "eval.baseline_selectors=[]",
                        "stages.accuracy=false", "stages.bench=false", "perplexity.max_documents=1",
                        "perplexity.window=64", *overrides])


def test_an_unwritable_results_file_stops_the_job_before_any_work(tmp_path, data_root, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(job_module, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    cfg = quick_job(tmp_path, data_root)
    began = time.perf_counter()
    with pytest.raises(ResultsError, match=r"sweep.results_file=.*a_file/x.jsonl.*cannot be written: .*a_file is a file, not a folder"):
        run_job(cfg, tmp_path, ResultsFile(blocker / "x.jsonl"))
    with pytest.raises(ResultsError, match="cannot be written"):
        run_job(cfg, tmp_path, ResultsFile("/proc/shadow-sweep-x.jsonl"))
    assert time.perf_counter() - began < 5


@pytest.mark.parametrize("multirun", [False, True])
def test_the_command_exits_non_zero_naming_the_results_file(tmp_path, data_root, multirun):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    command = [sys.executable, "-m", "shadow_sweep", *(["-m"] if multirun else []), "model=tiny-llama",
               "logger=none", f"paths.data_root={data_root}", f"sweep.results_file={blocker / 'x.jsonl'}",
               f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    if multirun:
        command.append("sparsity.level=0.3,0.5")
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sweep.results_file=" in done.stderr and "is a file, not a folder" in done.stderr
    assert "Traceback" not in done.stderr and "recorded in" not in done.stderr + done.stdout


def test_a_held_lock_fails_in_bounded_time_naming_it(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl", lock_timeout=0.5)
    with FileLock(str(results.lock_path)):
        began = time.perf_counter()
        with pytest.raises(ResultsError, match=r"results.jsonl.lock was not released within 0.5 s"):
            results.append([{"stage": "job"}])
        assert time.perf_counter() - began < 5


def test_a_damaged_line_is_named_and_its_point_measured_again(tmp_path, data_root, caplog):
    cfg = quick_job(tmp_path, data_root, "sparsity.levels=[0.3,0.5]")
    results = ResultsFile(tmp_path / "results.jsonl")
    run_job(cfg, tmp_path, results)
    lines = results.path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"sparsity": 0.5' in line and '"evaluate"' in line)
    lines[at] = lines[at][:len(lines[at]) // 2]  # half a line, as damage or a lost write leaves it
    results.path.write_text("\n".join(lines) + "\n")
    assert results.finished_keys() == set()  # its ok row lists a point no intact row holds
    assert f"line {at + 1}" in caplog.text
    problems = results.problems()
    assert any(f"results.jsonl:{at + 1}: malformed" in p for p in problems)
    assert any("missing" in p and "evaluate:teal:0.5:per_token" in p for p in problems)
    run_job(cfg, tmp_path, results)  # the relaunch: only the lost point, from the stage cache
    rows = results.rows()
    again = [r for r in rows[len(lines) - 1:] if r.get("stage") == "evaluate"]
    assert [(r["predictor"], r["sparsity"], r["cache_hit"]) for r in again] == [("teal", 0.5, True)]
    assert results.problems() == [f"{results.path}:{at + 1}: malformed line (left out)"]
    assert rows[-1]["status"] == "ok" and results.finished_keys()


def learned_job(tmp_path, data_root, results_name: str):
    cfg = quick_job(tmp_path, data_root, "predictor=shadowllm", "predictor.epochs=1", "calibration.examples_per_task=1",
                    "calibration.max_length=32", "sweep.skip_finished=false")
    results = ResultsFile(tmp_path / results_name)
    run_job(cfg, tmp_path, results)
    return {(r["predictor"], r["sparsity"]): r["token_perplexity"] for r in results.rows() if r["stage"] == "evaluate"}


@pytest.mark.parametrize("damaged", ["traces/*/*.safetensors", "predictor/*/*.safetensors", "evaluation/*/row.json",
                                     "evaluation/*/outcomes.json"])
def test_a_damaged_cache_entry_is_set_aside_and_computed_again(tmp_path, data_root, damaged, caplog):
    clean = learned_job(tmp_path, data_root, "clean.jsonl")
    cache = tmp_path / "cache"
    victim = sorted(cache.glob(damaged))[0]
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])  # truncated, as a full disk leaves it
    again = learned_job(tmp_path, data_root, "again.jsonl")
    assert again == clean  # the entry was computed again, the same
    stage = damaged.split("/")[0]
    assert len(list((cache / stage).glob("*.corrupt-*"))) == 1
    assert f"cache entry {victim.parent}" in caplog.text and "is damaged" in caplog.text


def test_cache_verify_checks_every_checksum_and_repairs(tmp_path, data_root, capsys):
    from shadow_sweep.cache_cli import main

    learned_job(tmp_path, data_root, "clean.jsonl")
    cache = tmp_path / "cache"
    victim = sorted(cache.glob("predictor/*/*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    victim.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_code:
        main(["verify", str(cache)])
    assert exit_code.value.code == 1
    assert f"{victim.parent}: damaged: {victim.name} differs from what was written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_code:
        main(["verify", str(cache), "--repair"])
    assert exit_code.value.code == 0 and not victim.parent.exists()
    assert len(list((cache / "predictor").glob("*.corrupt-*"))) == 1
    with pytest.raises(SystemExit) as exit_code:
        main(["verify", str(cache)])
    assert exit_code.value.code == 0 and "0 damaged" in capsys.readouterr().out


def test_sigterm_records_a_failed_point_and_a_relaunch_reruns_it(tmp_path, data_root):
    import json
    import signal

    command = [sys.executable, "-m", "shadow_sweep", "model=tiny-llama", "logger=none", f"paths.data_root={data_root}",
               f"paths.cache_dir={tmp_path / 'cache'}", "predictor=teal", "sparsity.rule=top_k",
               "eval.baseline_selectors=[]", "stages.accuracy=false", "stages.bench=false", "perplexity.window=64",
               "perplexity.max_documents=6", "sparsity.levels=[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]",
               f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "run" / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.is_file() and results.read_text().count("\n") >= 1):
        time.sleep(0.1)  # the dense point is in: the job is mid-way
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    last = json.loads(results.read_text().splitlines()[-1])
    assert (last["stage"], last["status"], last["error"]) == ("job", "failed", "terminated")
    assert not list((tmp_path / "cache").rglob(".tmp-*")) and not ResultsFile(results).finished_keys()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)  # the relaunch
    assert done.returncode == 0, done.stderr[-2000:]
    assert ResultsFile(results).finished_keys()
