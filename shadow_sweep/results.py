"""The local source of truth: one JSON line per measured point, in the sweep folder.

Rows carry `job_key` (a hash of the job's resolved config, without the fields that cannot
change a result: logger, sweep, cache path) and a point id (stage, predictor, sparsity,
update). Each row is appended as soon as its point is measured, under a file lock, in one
write, so parallel jobs never interleave lines and a killed job keeps what it finished.
A job ends with a `stage: job` row whose `status` is `ok` or `failed` (with the error).
"""

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

from filelock import FileLock, Timeout

from shadow_sweep.cache import cache_key, plain
from shadow_sweep.config import AppConfig

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
OUTCOMES_DIR = "outcomes"  # per-document outcomes of the evaluation rows, next to the results file
JOB_STAGE = "job"
COST_FIELDS = ("predictor_parameters", "predictor_macs_per_token", "model_macs_per_token",
               "predictor_macs_percent_of_model")  # predictors.cost
QUALITY_FIELDS = ("heads_spearman_mean", "neurons_spearman_mean", "heads_recall_mean", "neurons_recall_mean",
                  *COST_FIELDS)  # the predictor's quality and cost, on a job row

COMPARISON_AXES = {"predictor": ("predictor", ("name", "heads", "neurons")), "criterion": ("criterion", ("name",)),
                   "update": ("sparsity", ("update",))}  # axis (its row column's name): its config fields

# The fields each kind of row holds (docs/sweeps.md, "Row fields"); a test holds a real job's rows
# to them. Every row also carries the job's context (CONTEXT_FIELDS).
CONTEXT_FIELDS = ("job_key", "config_key", *(f"pair_key/{axis}" for axis in COMPARISON_AXES),
                  "sweep_id", "job", "model", "criterion", "job_predictor", "ranking", "job_update",
                  "job_prefill", "target_norm", "shots", "calibration_examples_per_task", "calibration_seed",
                  "predictor_seed", "predictor_width", "predictor_bottleneck", "rule", "allocation", "dense_positions")
SELECTION_FIELDS = ("selected_tokens", "weight_bytes_per_token", "fixed_bytes_per_token", "predictor_bytes_per_token",
                    "bytes_per_token", "dense_bytes_per_token", "bytes_fraction", "bytes_fraction_p05",
                    "bytes_fraction_p95", *(f"{stat}/{slot}" for stat in ("kept", "kept_p05", "kept_p95")
                                            for slot in ("attention_input", "head_context", "mlp_input",
                                                         "neuron_activation")))  # selectors.accounting
# Design fields added after results files existed: a row without one was made by the default.
LATER_DESIGN_DEFAULTS = {"rule": "default", "allocation": "uniform", "dense_positions": 0}

ROW_FIELDS = {
    "evaluate": ("stage", "predictor", "heads_selector", "neurons_selector", "heads_point", "neurons_point",
                 "deployable", "fixed", "uses_criterion", "sparsity", "update", "prefill", "ranking_rule", "eval_seconds",
                 "peak_memory_mib", "predictor_network_calls", "cache_hit", "outcomes", "line_key",
                 *SELECTION_FIELDS),
    # and acc/<task>, acc_stderr/<task>, documents/<task>, acc_norm(_stderr)/<task> (tasks that have it)
    "evaluate+accuracy": ("acc_mean", "acc_mean_stderr"),
    "evaluate+perplexity": ("token_perplexity", "token_perplexity_low", "token_perplexity_high", "perplexity_ci_unit",
                            "perplexity_units", "word_perplexity", "bits_per_byte", "perplexity_tokens"),
    "bench": ("stage", "path", "predictor", "update", "sparsity", "graph", "ms_per_token", "ms_per_token_min",
              "ms_per_token_max", "tokens_per_s", "speedup_vs_dense", "fastest_dense", "speedup_vs_fastest_dense",
              "bytes_per_token", "weight_bytes_per_token", "fixed_bytes_per_token", "kv_bytes_per_token",
              "predictor_bytes_per_token", "read_gb_per_s", "read_gb_per_s_min", "read_gb_per_s_max",
              "floor_ms_per_token", "x_floor", "tensor_read_gb_per_s", "x_tensor_read", "layout_bytes",
              "predictor_ms_per_token", "gather_ms_per_token", "lm_head_ms_per_token", "other_ms_per_token",
              *(f"{part}_ms_per_token" for part in ("attention_weights", "attention", "mlp_weights", "gate", "norms"))),

    "job": ("stage", "status", "torch_threads", "load_seconds", "job_seconds"),
    "job+fit": ("traces_examples", "traces_positions", "traces_bytes", "traces_bytes_per_1000_positions",
                "traces_cache_hit", "traces_seconds", "predictor_cache_hit", "fit_seconds", *QUALITY_FIELDS),
}


def missing_fields(row: dict, *kinds: str) -> list[str]:
    """The declared fields of these row kinds (and the context) that `row` lacks."""
    declared = CONTEXT_FIELDS + tuple(f for kind in kinds for f in ROW_FIELDS[kind])
    return [f for f in declared if f not in row]


def _result_fields(cfg: AppConfig) -> dict:
    """The config without the fields that cannot change a result: logger, sweep, cache path."""
    fields = plain(asdict(cfg))
    for name in ("logger", "sweep"):
        fields.pop(name)
    fields["paths"].pop("cache_dir")
    return fields


def job_key(cfg: AppConfig) -> str:
    """Identity of a job's results: its config without logger, sweep and paths.cache_dir."""
    return cache_key("job", _result_fields(cfg))


SEED_FIELDS = (("calibration", "seed"), ("predictor", "seed"))  # data_split.seed picks documents: not one
LEVEL_FIELDS = (("sparsity", "level"), ("sparsity", "levels"))  # a line spans levels: a row names its own


def comparison_keys(cfg: AppConfig) -> dict[str, str]:
    """`config_key`: the job's config without seeds and sparsity levels (rows differing only in
    seeds are repeats of one point; a row's own `sparsity` places it on its line);
    `pair_key/<axis>`: also without that axis's field (rows that differ only there are
    compared in pairs by the report)."""
    fields = _result_fields(cfg)
    for group, name in SEED_FIELDS + LEVEL_FIELDS:
        fields[group].pop(name)
    keys = {"config_key": cache_key("config", fields)}
    for axis, (group, names) in COMPARISON_AXES.items():
        keys[f"pair_key/{axis}"] = cache_key("pair", {**fields, group: {k: v for k, v in fields[group].items()
                                                                          if k not in names}})
    return keys


def point_id(row: dict) -> str:
    """stage:predictor:sparsity:update, and for latency rows HF generate's baseline and the
    CUDA-graph rows apart from our eager path's."""
    point = f"{row.get('stage')}:{row.get('predictor')}:{row.get('sparsity')}:{row.get('update')}"
    path = str(row.get("path"))
    return point + (f":{path}" if path.startswith("hf_generate") else "") + (":graph" if row.get("graph") else "")


def latency_mode(row: dict) -> str:
    """A latency row's curve: hf_generate(_compiled), or our path's update policy, `+graph` for CUDA-graph
    replays (W&B metric names and report columns: graph never averaged with eager)."""
    if str(row.get("path")).startswith("hf_generate"):
        return str(row["path"])  # hf_generate, hf_generate_compiled
    return f"{row.get('update')}+graph" if row.get("graph") is True else str(row.get("update"))


def finished_row(job_rows: list[dict]) -> Optional[dict]:
    """A job's latest `ok` job row among its rows, when it has finished: every point that row
    lists (`points`) is among the intact rows (a line lost to damage makes the job unfinished,
    so a relaunch measures that point again)."""
    done = [r for r in job_rows if r.get("stage") == JOB_STAGE and r.get("status") == "ok"]
    if not done:
        return None
    missing = set(done[-1].get("points", ())) - point_ids(job_rows)
    return None if missing else done[-1]


def missing_points(job_rows: list[dict]) -> set[str]:
    """Points a job's latest `ok` row lists that no intact row holds."""
    done = [r for r in job_rows if r.get("stage") == JOB_STAGE and r.get("status") == "ok"]
    return set(done[-1].get("points", ())) - point_ids(job_rows) if done else set()


def point_ids(job_rows: list[dict]) -> set[str]:
    """The points a job's rows hold (kept across a kill)."""
    return {point_id(r) for r in job_rows if r.get("stage") != JOB_STAGE}


class ResultsError(Exception):
    """The results file cannot be written or locked: nothing measured could be kept, so the job
    (and a sweep) fails at once."""


LOCK_TIMEOUT_S = 120.0  # longer than any append holds the lock: a stuck or foreign lock


class ResultsFile:
    def __init__(self, path: Path, lock_timeout: float = LOCK_TIMEOUT_S):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.malformed: list[int] = []  # line numbers of lines that did not parse, at the last read

    @property
    def lock_path(self) -> Path:
        return Path(str(self.path) + ".lock")

    @contextmanager
    def _locked(self):
        """The results file's lock, within `lock_timeout` (a ResultsError naming it otherwise)."""
        try:
            with FileLock(str(self.lock_path), timeout=self.lock_timeout):
                yield
        except Timeout as error:
            raise ResultsError(f"sweep.results_file: its lock {self.lock_path} was not released within "
                               f"{self.lock_timeout:g} s (another process holds it; delete it if none does)") from error

    def check_writable(self) -> None:
        """Before any work: the folder, the outcomes folder, the lock and the file itself can be
        created and written (a ResultsError naming `sweep.results_file` and why, in seconds)."""
        above = next(folder for folder in self.path.absolute().parents if folder.exists())
        if not above.is_dir():
            raise ResultsError(f"sweep.results_file={str(self.path)!r} cannot be written: {above} is a file, "
                               "not a folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            (self.path.parent / OUTCOMES_DIR).mkdir(exist_ok=True)
            with open(self.lock_path, "a"):
                pass
            with self._locked(), open(self.path, "ab") as sink:
                sink.flush()
                os.fsync(sink.fileno())
        except OSError as error:
            raise ResultsError(f"sweep.results_file={str(self.path)!r} cannot be written: "
                               f"{error.strerror or error} ({error.filename or self.path})") from error

    @classmethod
    def of_sweep(cls, results_file: Optional[str], sweep_dir: Path) -> "ResultsFile":
        """`sweep.results_file` when set, else results.jsonl in the sweep (or run) folder."""
        return cls(Path(results_file) if results_file else Path(sweep_dir) / RESULTS_NAME)

    def rows(self) -> list[dict]:
        """Every intact row. A line that does not parse (cut short by a killed writer, damaged)
        is left out, named in a warning with its line number, and kept in `malformed`."""
        self.malformed = []
        if not self.path.is_file():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self.malformed.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                self.malformed.append(number)
        if self.malformed:
            log.warning("%s: %d malformed line(s) left out (line %s); their points count as not measured",
                        self.path, len(self.malformed), ", ".join(map(str, self.malformed[:20])))
        return rows

    def append(self, rows: Iterable[dict]) -> None:
        text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(), open(self.path, "a+b") as sink:
                size = sink.seek(0, os.SEEK_END)
                if size and sink.seek(size - 1) is not None and sink.read(1) != b"\n":
                    text = "\n" + text  # end a line cut short by a killed writer first
                sink.write(text.encode())
                sink.flush()
                os.fsync(sink.fileno())
        except OSError as error:
            raise ResultsError(f"sweep.results_file={str(self.path)!r} cannot be written: "
                               f"{error.strerror or error}") from error

    def keep_outcomes(self, source: Path) -> str:
        """Copy a point's outcomes file (named by its cache entry) next to the results file,
        once; returns its path relative to the results file's folder (a row's `outcomes`)."""
        relative = Path(OUTCOMES_DIR) / f"{Path(source).parent.name}.json"
        target = self.path.parent / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(source, partial)
            partial.replace(target)  # atomic: a reader never sees half a file
        return relative.as_posix()

    def outcomes(self, row: dict) -> Optional[dict]:
        """The per-document outcomes of an evaluation row (None when it has none)."""
        if not row.get("outcomes"):
            return None
        return json.loads((self.path.parent / row["outcomes"]).read_text())

    def job_rows(self, key: str) -> list[dict]:
        return [r for r in self.rows() if r.get("job_key") == key]

    def finished(self, key: str) -> Optional[dict]:
        return finished_row(self.job_rows(key))

    def measured_points(self, key: str) -> set[str]:
        return point_ids(self.job_rows(key))

    def finished_keys(self) -> set[str]:
        """Job keys of finished jobs (finished_row: an `ok` row whose points are all intact)."""
        by_job: dict[str, list[dict]] = {}
        for row in self.rows():
            by_job.setdefault(row.get("job_key"), []).append(row)
        return {key for key, rows in by_job.items() if finished_row(rows) is not None}

    def problems(self) -> list[str]:
        """What a report must not hide: malformed lines, jobs whose latest row is `failed`,
        points a finished job listed that no intact row holds (each a line naming file and job)."""
        rows = self.rows()
        found = [f"{self.path}:{number}: malformed line (left out)" for number in self.malformed]
        found += [f"{self.path}: failed point {row.get('job')}: {row.get('error', '')}" for row in self.failed_jobs()]
        by_job: dict[str, list[dict]] = {}
        for row in rows:
            by_job.setdefault(row.get("job_key"), []).append(row)
        for job_rows in by_job.values():
            missing = missing_points(job_rows)
            if missing:
                found.append(f"{self.path}: point(s) of job {job_rows[-1].get('job')} missing: {sorted(missing)} "
                             "(a relaunch measures them again)")
        return found

    def failed_jobs(self) -> list[dict]:
        """The latest job row of every job whose latest job row is `failed`."""
        latest = {r["job_key"]: r for r in self.rows() if r.get("stage") == JOB_STAGE}
        return [r for r in latest.values() if r.get("status") == "failed"]
