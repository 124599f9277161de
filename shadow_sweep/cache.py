"""Stage cache: one folder per (stage, key), written atomically under a file lock.

key = sha256 of {stage, the format versions of the stage and of every stage it reads, the
versions of the libraries that change its numbers, the config fields that affect it}.
A stage's format version (`STAGE_FORMATS`) is bumped whenever a change to the code changes
what the stage computes or stores (a criterion's formula, the trace layout, the evaluation
protocol): every entry made by the old code then misses, and so do the entries downstream
of it. tests/test_cache_versions.py holds a fingerprint of each stage's code and fails when
that code changes while the version stays (see docs/sweeps.md, "Cache versions").
An entry is complete when its manifest exists: it is built in a temporary folder beside
its final place and renamed into place, so a killed job never leaves a half entry (its
temporary folder is removed by the next writer of that key, under the lock), and
parallel jobs that need the same entry build it once (the second waits on the lock).
"""

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

MANIFEST = "manifest.json"
_VERSIONED_LIBRARIES = ("shadow-sweep", "torch", "transformers", "lm_eval")


@dataclass(frozen=True)
class StageFormat:
    """What besides config fields decides a stage's entries."""

    version: int  # bump when the stage's code changes what it computes or stores
    reads: tuple[str, ...] = ()  # upstream stages whose entries this one is computed from
    libraries: tuple[str, ...] = ()  # libraries whose versions change its numbers


STAGE_FORMATS: dict[str, StageFormat] = {
    "gguf": StageFormat(1),
    "model": StageFormat(1, libraries=("transformers", "gguf")),
    "tasks": StageFormat(1, libraries=("lm_eval",)),
    "traces": StageFormat(3, reads=("model", "tasks"), libraries=("torch", "transformers", "lm_eval")),
    "predictor": StageFormat(4, reads=("traces",), libraries=("torch",)),
    "statistics": StageFormat(1, reads=("model", "tasks"), libraries=("torch", "transformers", "lm_eval")),
    "allocation": StageFormat(1, reads=("statistics",), libraries=("torch", "transformers")),
    "evaluation": StageFormat(5, reads=("predictor", "allocation"), libraries=("torch", "transformers", "lm_eval")),
}


def plain(value: Any) -> Any:
    """Enums -> their values, recursively through dicts and lists (JSON-ready config fields)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def library_versions(names: tuple[str, ...] = _VERSIONED_LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def lineage(stage: str) -> list[str]:
    """The stage and every stage it reads, transitively, each once."""
    order = [stage]
    for upstream in STAGE_FORMATS[stage].reads if stage in STAGE_FORMATS else ():
        order += [s for s in lineage(upstream) if s not in order]
    return order


def stage_format(stage: str) -> dict[str, Any]:
    """The format versions of `stage`'s lineage and the versions of the libraries they name."""
    stages = [s for s in lineage(stage) if s in STAGE_FORMATS]
    libraries = sorted({lib for s in stages for lib in STAGE_FORMATS[s].libraries})
    return {"formats": {s: STAGE_FORMATS[s].version for s in stages},
            "libraries": library_versions(tuple(libraries))}


def cache_key(stage: str, fields: Mapping[str, Any]) -> str:
    payload = {"stage": stage, **stage_format(stage), "fields": fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageCache:
    root: Path
    builds: Counter = field(default_factory=Counter)  # entries this instance built, per stage

    def built(self, stage: str, action: Callable[[], Any]) -> tuple[Any, bool]:
        """(action's result, whether it built a `stage` entry rather than finding one)."""
        before = self.builds[stage]
        return action(), self.builds[stage] > before

    def entry(self, stage: str, fields: Mapping[str, Any]) -> Path:
        return Path(self.root) / stage / cache_key(stage, fields)

    def get_or_build(self, stage: str, fields: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        """The entry's folder; `build(tmp_dir)` fills a fresh folder when it is missing."""
        final = self.entry(stage, fields)
        if (final / MANIFEST).is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if (final / MANIFEST).is_file():
                return final
            for stale in final.parent.glob(f".tmp-{final.name}-*"):  # left by a killed writer
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                build(tmp)
                manifest = {"stage": stage, "key": final.name, **stage_format(stage), "fields": dict(fields),
                            "versions": library_versions()}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
                if final.exists():  # a folder without manifest: left by an older, broken writer
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self.builds[stage] += 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final
