"""Every input is checked before the model loads, and a user's mistake is one line naming the
field or file; the command starts without the job's libraries."""

import subprocess
import sys

import pytest

from shadow_sweep.config import ConfigError, UserError
from shadow_sweep.data.root import DataRootError
from shadow_sweep.models.loading import ModelUnavailableError
from shadow_sweep.sweep import job as job_module
from shadow_sweep.sweep.job import run_job
from shadow_sweep.validation import validate
from tests.conftest import REPO, compose_app


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(job_module, "load_model", lambda *a, **k: pytest.fail("the model must not load"))


def data_root_without(tmp_path, data_root, missing: str):
    """A data root holding every folder of the real one but `missing` (links, no copies)."""
    root = tmp_path / "data"
    root.mkdir()
    for folder in data_root.iterdir():
        if folder.name != missing:
            (root / folder.name).symlink_to(folder)
    return root


def job(tmp_path, *overrides):
    return compose_app(["model=tiny-llama", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def test_a_missing_calibration_file_fails_before_the_model_loads(tmp_path, data_root, no_model_load):
    root = data_root_without(tmp_path, data_root, "piqa")
    cfg = job(tmp_path, f"paths.data_root={root}", "stages.perplexity=false", "stages.accuracy=false")
    with pytest.raises(DataRootError, match=r"'piqa/dev.jsonl' is missing under the data root .*paths.data_root"):
        run_job(cfg, tmp_path / "run")


def test_a_missing_data_root_fails_before_the_model_loads(tmp_path, no_model_load):
    cfg = job(tmp_path, "paths.data_root=/nonexistent", "stages.perplexity=false")
    with pytest.raises(DataRootError, match="data root '/nonexistent' does not exist"):
        run_job(cfg, tmp_path / "run")


def test_a_task_yaml_that_does_not_parse_is_named_with_its_error(tmp_path, data_root, no_model_load):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "broken.yaml").write_text("task: broken\ndoc_to_text: \"unclosed\n  - [\n")
    cfg = job(tmp_path, f"paths.data_root={data_root}", f"eval.include_path={tasks}", "eval.tasks=[broken]")
    with pytest.raises(ConfigError, match=r"broken.yaml does not parse: .*line \d+"):
        run_job(cfg, tmp_path / "run")


def test_a_missing_function_of_a_task_yaml_is_one_line(tmp_path, data_root, no_model_load):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "fn.yaml").write_text("task: fn\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                   "    test: colours/test.jsonl\noutput_type: multiple_choice\ntest_split: test\n"
                                   "doc_to_text: !function nowhere.doc_to_text\ndoc_to_choice: '{{choices}}'\n"
                                   "doc_to_target: '{{label}}'\n")
    cfg = job(tmp_path, f"paths.data_root={data_root}", f"eval.include_path={tasks}", "eval.tasks=[fn]")
    with pytest.raises(ConfigError, match=r"fn.yaml: a `!function` cannot be loaded"):
        run_job(cfg, tmp_path / "run")


def test_repeated_levels_are_refused():
    with pytest.raises(ConfigError, match=r"sparsity.levels=\[0.5, 0.5\] is not allowed: expected distinct levels"):
        validate(compose_app(["sparsity.levels=[0.5,0.5]"]))


def test_include_path_as_one_folder_is_a_one_item_list():
    assert compose_app(["eval.include_path=examples/tasks"]).eval.include_path == ["examples/tasks"]
    assert compose_app(["eval.include_path=[a,b]"]).eval.include_path == ["a", "b"]


@pytest.mark.parametrize("present, missing", [([], "config.json"), (["config.json"], "weights"),
                                              (["config.json", "model.safetensors"], "a tokenizer")])
def test_an_incomplete_model_folder_is_named(tmp_path, present, missing):
    from shadow_sweep.models.loading import check_model_files

    folder = tmp_path / "model"
    folder.mkdir()
    for name in present:
        (folder / name).write_text("{}")
    cfg = compose_app(["model=local", f"model.local_path={folder}"]).model
    with pytest.raises(ModelUnavailableError, match=f"not a complete model folder: it has no {missing}"):
        check_model_files(cfg)
    assert issubclass(ModelUnavailableError, UserError)


def test_a_user_error_is_one_line_from_the_command(tmp_path):
    command = [sys.executable, "-m", "shadow_sweep", "model=tiny-llama", "logger=none", "paths.data_root=/nonexistent",
               f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "shadow-sweep: error: data root '/nonexistent' does not exist" in done.stderr


def test_help_and_a_field_error_start_without_the_job_libraries():
    probe = ("import sys\nsys.argv = ['shadow-sweep', *sys.argv[1:]]\nfrom shadow_sweep.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('loaded:', sorted(m for m in ('torch', 'transformers', 'lm_eval', 'pandas') if m in sys.modules))")
    for arguments in (["--help"], ["sparsity.head_level=1.5"]):
        done = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
        assert "loaded: []" in done.stdout, (arguments, done.stdout[-500:], done.stderr[-500:])
