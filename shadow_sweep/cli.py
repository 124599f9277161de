"""The `shadow-sweep` command. Off a terminal (stderr a file or a pipe) every progress bar,
ours, lm-eval's and datasets', redraws at most once a minute, so a log gets a line a minute per
bar instead of thousands of updates. tqdm reads TQDM_* variables when it is imported, so they
are set before the app (and through it tqdm) is imported; a user's own setting wins."""

import os
import sys


def main() -> None:
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "60")
    from shadow_sweep.sweep.app import main as app_main

    app_main()
