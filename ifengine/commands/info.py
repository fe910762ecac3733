"""`ifengine info IMAGE.png`: the generation settings an image carries (A1111 text and ifengine JSON);
`ifengine info --system`: what is installed (versions, extras, ONNX Runtime providers) and what conflicts."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("ifengine.cli")


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="print the generation settings stored in a PNG",
        description="Print a PNG's A1111-style 'parameters' text and ifengine's settings (JSON). "
        "`ifengine generate --from IMAGE.png` runs those settings again. --system: the installed packages, "
        "ONNX Runtime providers and devices, with a warning for conflicting installs.",
    )
    p.add_argument("images", nargs="*", type=Path, help="PNG files written by ifengine (or A1111-style tools)")
    p.add_argument("--json", action="store_true", help="print only ifengine's settings (or --system), as JSON")
    p.add_argument("--system", action="store_true", help="what is installed: packages, providers, devices")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..pipeline.metadata import read_image

    if args.system:
        return _system(args.json)
    if not args.images:
        raise ValueError("give one or more PNG files, or --system")

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


def _system(as_json: bool) -> int:
    from ..installed import ort_conflict, system_report

    report = system_report()
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        for key, value in report.items():
            sys.stdout.write(f"{key}: {value if not isinstance(value, (list, dict)) else json.dumps(value)}\n")
    conflict = ort_conflict()
    if conflict:
        log.warning(conflict)
    return 0
