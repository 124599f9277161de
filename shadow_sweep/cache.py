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
The manifest records every file's size and sha256. Reading an entry verifies it once per
StageCache (sizes always; checksums of every JSON file and of files up to CHECKSUM_BYTES):
a damaged entry is moved aside (`<key>.corrupt-<time>`), a warning names it, and the stage
computes it again; `shadow-sweep cache verify [--repair]` checks every checksum of a cache.
Entries made before files were recorded are read as they are (`cache verify` names them).
"""

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKSUM_BYTES = 100 * 2**20  # files up to this size (and every JSON file) are checksummed on read
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
    "evaluation": StageFormat(7, reads=("predictor", "allocation"), libraries=("torch", "transformers", "lm_eval")),
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(2**22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """Every file of an entry but its manifest: relative path -> size and sha256."""
    return {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}


def entry_problem(folder: Path, every_checksum: bool = False) -> Optional[str]:
    """What is wrong with a complete entry, or None: an unreadable manifest, a missing file, a
    size or (JSON files, files up to CHECKSUM_BYTES, or all with `every_checksum`) a checksum
    that differs from the manifest's record."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        return f"its manifest cannot be read ({error})"
    for name, record in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{name} has {size} bytes, {record['size']} when written"
        if (every_checksum or name.endswith(".json") or size <= CHECKSUM_BYTES) and sha256_of(path) != record["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def set_aside(folder: Path, problem: str) -> Path:
    """Move a damaged entry out of the way (`<key>.corrupt-<time>`), with a warning naming it."""
    aside = folder.with_name(f"{folder.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}")
    os.replace(folder, aside)
    log.warning("cache entry %s is damaged (%s): moved to %s; it is computed again", folder, problem, aside.name)
    return aside


def verify_cache(root: Path, repair: bool = False) -> list[str]:
    """Every complete entry under `root` checked with every checksum: one line per damaged
    entry (moved aside with `repair`) and per entry without file records (written before they
    were kept)."""
    found = []
    for manifest in sorted(Path(root).glob(f"*/*/{MANIFEST}")):
        folder = manifest.parent
        if ".corrupt-" in folder.name or folder.name.startswith(".tmp-"):
            continue
        problem = entry_problem(folder, every_checksum=True)
        if problem is None and "files" not in json.loads(manifest.read_text()):
            found.append(f"{folder}: no file records (written by an older version): not verifiable")
        elif problem is not None:
            moved = f"; moved to {set_aside(folder, problem).name}" if repair else ""
            found.append(f"{folder}: damaged: {problem}{moved}")
    return found


@dataclass
class StageCache:
    root: Path
    builds: Counter = field(default_factory=Counter)  # entries this instance built, per stage
    verified: set = field(default_factory=set)  # entries this instance read and found whole

    def intact(self, final: Path) -> bool:
        """A complete entry whose files are as written (verified once per instance); a damaged
        one is moved aside and reads as missing."""
        if final in self.verified:
            return True
        if not (final / MANIFEST).is_file():
            return False
        problem = entry_problem(final)
        if problem is not None:
            set_aside(final, problem)
            return False
        self.verified.add(final)
        return True

    def built(self, stage: str, action: Callable[[], Any]) -> tuple[Any, bool]:
        """(action's result, whether it built a `stage` entry rather than finding one)."""
        before = self.builds[stage]
        return action(), self.builds[stage] > before

    def entry(self, stage: str, fields: Mapping[str, Any]) -> Path:
        return Path(self.root) / stage / cache_key(stage, fields)

    def get_or_build(self, stage: str, fields: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        """The entry's folder; `build(tmp_dir)` fills a fresh folder when it is missing."""
        final = self.entry(stage, fields)
        if (final / MANIFEST).is_file() and final in self.verified:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if self.intact(final):
                return final
            for stale in final.parent.glob(f".tmp-{final.name}-*"):  # left by a killed writer
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                build(tmp)
                manifest = {"stage": stage, "key": final.name, **stage_format(stage), "fields": dict(fields),
                            "versions": library_versions(), "files": file_records(tmp)}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
                if final.exists():  # a folder without manifest: left by an older, broken writer
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self.verified.add(final)
                self.builds[stage] += 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final
