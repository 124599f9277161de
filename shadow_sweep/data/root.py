"""The offline data root (`paths.data_root`): checked once, with an actionable error."""

from pathlib import Path

from shadow_sweep.config import UserError


class DataRootError(FileNotFoundError, UserError):
    pass


def data_file(data_root: str | Path, relative: str) -> Path:
    """`data_root/relative`, or an error naming the path and the setting to change."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataRootError(
            f"data root {str(root)!r} does not exist (resolved: {root.resolve()}). Set paths.data_root=... "
            "or the SHADOW_SWEEP_DATA environment variable to the folder holding the offline data sets."
        )
    path = root / relative
    if not path.is_file():
        raise DataRootError(f"{relative!r} is missing under the data root {str(root)!r} (paths.data_root)")
    return path
