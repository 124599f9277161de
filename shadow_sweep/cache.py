"""Stage cache: one folder per (stage, key), written atomically under a file lock.

key = sha256 of {stage, format version, the config fields that affect the stage}.
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

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_VERSIONED_LIBRARIES = ("shadow-sweep", "torch", "transformers", "lm_eval")


def plain(value: Any) -> Any:
    """Enums -> their values, recursively through dicts and lists (JSON-ready config fields)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cache_key(stage: str, fields: Mapping[str, Any]) -> str:
    payload = json.dumps({"stage": stage, "format": FORMAT_VERSION, "fields": fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
                manifest = {"stage": stage, "key": final.name, "format": FORMAT_VERSION, "fields": dict(fields),
                            "versions": library_versions()}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
                if final.exists():  # a folder without manifest: left by an older, broken writer
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self.builds[stage] += 1
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final
