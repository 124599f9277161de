"""Where a task's definition and documents come from, before they are split (`data.tasks`).

- converted: the seven built-in tasks our converters read from the data root
  (`data.converters.TASK_FILES`), under lm-eval's built-in YAML;
- indexed: any other lm-eval task by name: the user's YAMLs in `eval.include_path`, else
  lm-eval's built-in ones. Its data set is read the way lm-eval reads it (`datasets.load_dataset`
  with the YAML's `dataset_path`, `dataset_name`, `dataset_kwargs`), except that relative
  `data_files` resolve against the data root and a hub data set copied to
  `<data_root>/<dataset_path>` (a snapshot of its repository) is read from there, offline.
  The documents are the rows of its test split, else its validation split, as stored
  (the YAML's `process_docs` still applies when lm-eval loads the parts).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lm_eval.tasks
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import Kind
from lm_eval.tasks._yaml_loader import load_yaml

from shadow_sweep.data.converters import TASK_FILES

LOCAL_BUILDERS = ("arrow", "csv", "json", "parquet", "text")  # datasets' builders over files


class UnknownTaskError(ValueError):
    pass


@dataclass
class TaskSource:
    name: str
    config: dict  # lm-eval task config, functions resolved
    key: dict  # what identifies the documents (cache fields)
    documents: Callable[[], tuple[list[dict], list[dict] | None]]  # (scored split, separate calibration split)

    @property
    def multiple_choice(self) -> bool:
        return self.config.get("output_type") == "multiple_choice"


def converted_source(name: str, data_root: str | Path) -> TaskSource:
    files = TASK_FILES[name]
    config = load_yaml(Path(lm_eval.tasks.__file__).parent / files.lm_eval_yaml, resolve_func=True)
    root = Path(data_root)

    def documents() -> tuple[list[dict], list[dict] | None]:
        return files.evaluation(root), files.calibration(root) if files.calibration else None

    return TaskSource(name, config, {"task": name, "data_root": str(root.resolve())}, documents)


def task_entry(name: str, include_path: list[str]):
    """lm-eval's index entry of `name`: the user's folders first (fast), then the built-in tasks."""
    folders = [str(Path(p).resolve()) for p in include_path]
    for defaults in ([False, True] if folders else [True]):
        entry = TaskManager(include_path=folders or None, include_defaults=defaults).task_index.get(name)
        if entry is not None:
            break
    if entry is None:
        broken = "".join(f"; {problem}" for problem in unreadable_yamls(folders))
        raise UnknownTaskError(f"task {name!r} is neither an offline task ({', '.join(sorted(TASK_FILES))}) nor an "
                               f"lm-eval task in eval.include_path={include_path} or lm-eval's built-in tasks{broken}")
    if entry.kind != Kind.TASK or entry.yaml_path is None:
        raise UnknownTaskError(f"{name!r} is an lm-eval {entry.kind.name.lower()}, not a YAML task: name its tasks")
    return entry


def unreadable_yamls(folders: list[str]) -> list[str]:
    """The task YAMLs in these folders that do not parse (lm-eval's index skips them silently),
    each with its parser's error."""
    found = []
    for path in sorted(p for folder in folders for p in Path(folder).rglob("*.y*ml")):
        try:
            load_yaml(path, resolve_func=False)
        except Exception as error:  # yaml's many error types, with line and column
            found.append(f"{path} does not parse: {' '.join(str(error).split())}")
    return found


def load_task_yaml(path: Path) -> dict:
    """A task YAML with its `!function`s resolved; a function that cannot be imported is named."""
    try:
        return load_yaml(path, resolve_func=True)
    except (ImportError, AttributeError, FileNotFoundError) as error:
        raise UnknownTaskError(f"task YAML {path}: a `!function` cannot be loaded ({type(error).__name__}: "
                               f"{error})") from error


def dataset_arguments(config: dict, data_root: str | Path) -> dict:
    """`datasets.load_dataset` arguments: relative data_files under the data root, a hub data set
    from `<data_root>/<dataset_path>` where that folder exists."""
    root = Path(data_root)
    kwargs = dict(config.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _under(root, kwargs["data_files"])
    path = config["dataset_path"]
    if path not in LOCAL_BUILDERS and (root / path).is_dir():
        path = str((root / path).resolve())
    return {"path": path, "name": config.get("dataset_name"), **kwargs}


def _under(root: Path, files):
    if isinstance(files, dict):
        return {split: _under(root, value) for split, value in files.items()}
    if isinstance(files, (list, tuple)):
        return [_under(root, value) for value in files]
    return str(root / files) if not Path(files).is_absolute() and "://" not in str(files) else files


def indexed_source(name: str, data_root: str | Path, include_path: list[str]) -> TaskSource:
    import datasets

    entry = task_entry(name, include_path)
    config = load_task_yaml(Path(entry.yaml_path))
    split = config.get("test_split") or config.get("validation_split")
    if not split:
        raise UnknownTaskError(f"task {name!r} ({entry.yaml_path}) has neither a test_split nor a validation_split")
    arguments = dataset_arguments(config, data_root)
    try:
        rows = datasets.load_dataset(**arguments, split=split)
    except Exception as error:  # datasets raises many types for a missing or unreadable source
        raise UnknownTaskError(
            f"task {name!r}: its data set could not be read ({type(error).__name__}: {error}); arguments "
            f"{arguments}. Relative dataset_kwargs.data_files resolve against paths.data_root; a hub data set "
            f"runs offline from a copy of its repository at <paths.data_root>/{config['dataset_path']}") from error
    definition = json.dumps(load_yaml(entry.yaml_path, resolve_func=False), sort_keys=True, default=str)
    key = {"task": name, "definition_sha256": hashlib.sha256(definition.encode()).hexdigest(),
           "dataset": rows._fingerprint, "split": split}
    return TaskSource(name, config, key, lambda: (rows.to_list(), None))


def definitions_digest(tasks: list[str], include_path: list[str]) -> str | None:
    """sha256 over the YAML files under the include folders (names and contents) when some of
    `tasks` may be defined there (not converted), else None: the cache key of their definitions."""
    if not include_path or all(task in TASK_FILES for task in tasks):
        return None
    digest = hashlib.sha256()
    for folder in include_path:
        for file in sorted(Path(folder).rglob("*.yaml")):
            digest.update(f"{file.relative_to(folder)}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def task_source(name: str, data_root: str | Path, include_path: list[str] = ()) -> TaskSource:
    """Converted where we have a converter, else lm-eval's definition of `name`."""
    if name in TASK_FILES:
        return converted_source(name, data_root)
    return indexed_source(name, data_root, list(include_path))
