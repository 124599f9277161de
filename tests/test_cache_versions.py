"""Cache versions: a stage's key changes with its format version, the versions of the stages
it reads and of the libraries that change its numbers; and a stage's code cannot change while
its version stays (fingerprints of the code, docstrings and comments left out).

When `test_stage_code_changes_bump_the_stage_version` fails: if the change alters what the
stage computes or stores, bump `STAGE_FORMATS[stage].version` in shadow_sweep/cache.py; then
`python -m tests.test_cache_versions` records the new fingerprints (it refuses a stage whose code
changed while its version stayed: edit tests/cache_fingerprints.json by hand only for a change
that provably computes the same).
"""

import ast
import hashlib
import json
from pathlib import Path

import pytest

from shadow_sweep import cache
from shadow_sweep.cache import STAGE_FORMATS, StageFormat, cache_key, lineage
from shadow_sweep.decode.fused import build_dir

PACKAGE = Path(cache.__file__).parent
RECORD = Path(__file__).parent / "cache_fingerprints.json"

# The modules whose code decides what each stage's entries hold.
STAGE_CODE = {
    "gguf": ["models/loading.py", "models/gguf.py"],
    "model": ["models/loading.py", "models/gguf.py"],
    "tasks": ["data/tasks.py", "data/converters.py", "data/task_sources.py"],
    "traces": ["traces/*.py", "criteria/*.py", "data/calibration.py", "data/requests.py", "data/wikitext.py"],
    "predictor": ["predictors/*.py"],
    "statistics": ["selectors/statistics.py", "selectors/stage.py", "data/calibration.py", "data/requests.py"],
    "allocation": ["selectors/allocation.py", "selectors/stage.py", "selectors/teal.py", "selectors/wina.py",
                   "models/masks.py"],
    "evaluation": ["evaluation/*.py", "data/requests.py", "models/masks.py", "sparsity/*.py", "predictors/*.py",
                   "selectors/*.py", "decode/*.py", "data/wikitext.py", "statistics.py"],
}


def code_fingerprint(patterns: list[str]) -> str:
    """sha256 over the ASTs of the matched modules, docstrings removed (comments never parse)."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in patterns for p in PACKAGE.glob(pattern)}):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def test_every_cached_stage_has_code_and_a_record():
    assert set(STAGE_CODE) == set(STAGE_FORMATS)
    assert set(json.loads(RECORD.read_text())) == set(STAGE_FORMATS)


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_stage_code_changes_bump_the_stage_version(stage):
    recorded = json.loads(RECORD.read_text())[stage]
    now = {"fingerprint": code_fingerprint(STAGE_CODE[stage]), "version": STAGE_FORMATS[stage].version}
    if now["fingerprint"] != recorded["fingerprint"]:
        assert now["version"] != recorded["version"], (
            f"the code of stage {stage!r} changed but STAGE_FORMATS[{stage!r}].version is still "
            f"{now['version']}: bump it if what the stage computes or stores changed, then record "
            f'"{stage}": {json.dumps(now)} in {RECORD.name}')
        pytest.fail(f"stage {stage!r}: version bumped; record \"{stage}\": {json.dumps(now)} in {RECORD.name}")
    assert now["version"] == recorded["version"], f"record \"{stage}\": {json.dumps(now)} in {RECORD.name}"


def test_a_version_bump_misses_the_stage_and_everything_downstream(monkeypatch):
    fields = {"a": 1}
    before = {stage: cache_key(stage, fields) for stage in STAGE_FORMATS}
    old = STAGE_FORMATS["traces"]
    monkeypatch.setitem(STAGE_FORMATS, "traces", StageFormat(old.version + 1, old.reads, old.libraries))
    after = {stage: cache_key(stage, fields) for stage in STAGE_FORMATS}
    changed = {stage for stage in STAGE_FORMATS if before[stage] != after[stage]}
    assert changed == {"traces", "predictor", "evaluation"}
    assert lineage("evaluation") == ["evaluation", "predictor", "traces", "model", "tasks", "allocation", "statistics"]


def test_library_versions_are_in_the_keys_of_the_stages_they_change(monkeypatch):
    fields = {"a": 1}
    before = {stage: cache_key(stage, fields) for stage in STAGE_FORMATS}
    real = cache.library_versions

    def lm_eval_upgraded(names=cache._VERSIONED_LIBRARIES):
        return {k: ("9.9" if k == "lm_eval" else v) for k, v in real(names).items()}

    monkeypatch.setattr(cache, "library_versions", lm_eval_upgraded)
    changed = {stage for stage in STAGE_FORMATS if cache_key(stage, fields) != before[stage]}
    assert changed == {"tasks", "traces", "predictor", "statistics", "allocation", "evaluation"}


def test_kernel_builds_are_kept_apart_per_cpu_feature_set(tmp_path):
    assert build_dir(tmp_path, "aaaa") != build_dir(tmp_path, "bbbb")
    assert build_dir(tmp_path) == build_dir(tmp_path)  # this host: one stable folder


def record_fingerprints() -> None:
    """`python -m tests.test_cache_versions`: record each stage's fingerprint, refusing a stage
    whose code changed while its version stayed (bump it first, or confirm it computes the same
    by editing the record by hand)."""
    recorded = json.loads(RECORD.read_text())
    refused = []
    for stage, patterns in sorted(STAGE_CODE.items()):
        now = {"fingerprint": code_fingerprint(patterns), "version": STAGE_FORMATS[stage].version}
        old = recorded.get(stage)
        if old and old["fingerprint"] != now["fingerprint"] and old["version"] == now["version"]:
            refused.append(stage)
            continue
        recorded[stage] = now
    RECORD.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    if refused:
        raise SystemExit(f"code changed, version not bumped: {refused} (STAGE_FORMATS in shadow_sweep/cache.py)")


if __name__ == "__main__":
    record_fingerprints()
