"""`ifengine info IMAGE.png`: the generation settings an image carries (A1111 text and ifengine JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="print the generation settings stored in a PNG",
        description="Print a PNG's A1111-style 'parameters' text and ifengine's settings (JSON). "
        "`ifengine generate --from IMAGE.png` runs those settings again.",
    )
    p.add_argument("images", nargs="+", type=Path, help="PNG files written by ifengine (or A1111-style tools)")
    p.add_argument("--json", action="store_true", help="print only ifengine's settings, as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipeline.metadata import read_image

    for n, path in enumerate(args.images):
        parameters, settings = read_image(path)
        if args.json:
            sys.stdout.write(json.dumps(settings, indent=2, sort_keys=True) + "\n")
            continue
        if len(args.images) > 1:
            sys.stdout.write(f"{'' if n == 0 else chr(10)}== {path}\n")
        if parameters is not None:
            sys.stdout.write(f"parameters:\n{parameters}\n")
        if settings is not None:
            sys.stdout.write(f"ifengine:\n{json.dumps(settings, indent=2, sort_keys=True)}\n")
    return 0
