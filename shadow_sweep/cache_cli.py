"""`shadow-sweep cache verify [--repair] [DIR]`: check every checksum of a stage cache (default
`$SHADOW_SWEEP_CACHE` or outputs/cache); exit 1 when an entry is damaged. `--repair` moves each
damaged entry aside (`<key>.corrupt-<time>`); the stage computes it again when next needed."""

import argparse
import os
import sys
from pathlib import Path

from shadow_sweep.cache import verify_cache


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="shadow-sweep cache", description=__doc__)
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("root", nargs="?", type=Path, default=Path(os.environ.get("SHADOW_SWEEP_CACHE", "outputs/cache")),
                        help="the cache folder (paths.cache_dir)")
    parser.add_argument("--repair", action="store_true", help="move damaged entries aside")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a folder (paths.cache_dir)")
    found = verify_cache(args.root, args.repair)
    entries = len(list(args.root.glob("*/*/manifest.json")))
    for line in found:
        print(line)
    damaged = sum("damaged" in line for line in found)
    print(f"{entries} entries checked under {args.root}: {damaged} damaged")
    sys.exit(1 if damaged and not args.repair else 0)
