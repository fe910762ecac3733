"""`ifengine serve`: the cascade behind an OpenAI-style images API on Ray Serve.

Flags map onto ``ifengine.serve.ServeConfig``; the same config drives ``--print-config`` (a Ray Serve
config file for ``serve deploy``) and ``ifengine.serve.app`` (for ``serve run``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .common import DTYPES, memory_size

log = logging.getLogger("ifengine.cli")
PARTS = ("text", "stage1", "stage2", "stage3", "single")


def positive(text: str) -> int:
    """A whole number >= 1 (argparse reports the ValueError with the flag's name)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive.__name__ = "whole number >= 1"  # what per_stage's message calls the expected value


def per_stage(kind):
    """'2' (every stage) or 'stage1=2,stage2=1' -> {part: value}."""

    def parse(text: str) -> dict:
        out = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep:
                name, value = "*", name
            name = name.strip()
            if name != "*" and name not in PARTS:
                raise argparse.ArgumentTypeError(f"unknown deployment {name!r}; known: {', '.join(PARTS)}")
            try:
                out[name] = kind(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a {kind.__name__} for {name}, got {value!r}") from None
        return out

    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the cascade over HTTP on Ray Serve (OpenAI-style images API)",
        description="Serve DeepFloyd IF on Ray Serve: one deployment per stage (or --layout single), "
        "batched and replicated independently. Without --stage1/2/3 the tiny demo cascade is served.",
    )
    p.add_argument("--stage1", help="stage I checkpoint (folder in the Hub layout or Hub id)")
    p.add_argument("--stage2", help="stage II checkpoint")
    p.add_argument("--stage3", help="stage III checkpoint")
    p.add_argument("--variant", default=None, help="weight variant, e.g. fp16")
    p.add_argument(
        "--artifacts", default=None, help="exported graphs (`ifengine export`) on ONNX Runtime, in either layout"
    )
    p.add_argument(
        "--engines", default=None, help="TensorRT engines (`ifengine build`), checked before serving, in either layout"
    )
    p.add_argument("--providers", default=None, help="ONNX Runtime providers for --artifacts: cpu, cuda or tensorrt")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda where a replica has a GPU)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="float16 on GPU, float32 on CPU by default")
    p.add_argument("--layout", choices=("split", "single"), default="split", help="one deployment per stage, or one")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' ($IFENGINE_API_KEY)")
    p.add_argument("--no-safety", action="store_true", help="skip the safety checker and watermark (logged)")
    p.add_argument("--lora-dir", default=None, help="LoRA files (NAME.safetensors) a request names as its `model`")
    group = p.add_argument_group("deployments ('N' for all, or e.g. 'stage1=2,stage3=4')")
    group.add_argument("--replicas", type=per_stage(int), default={}, help="replicas per deployment")
    group.add_argument("--gpus", type=per_stage(float), default={}, help="GPUs per replica (fractions allowed)")
    group.add_argument("--cpus", type=per_stage(float), default={}, help="CPUs reserved per replica")
    group.add_argument("--max-batch", type=per_stage(int), default={}, help="largest batch per stage call")
    group.add_argument("--batch-wait-ms", type=per_stage(float), default={}, help="how long a batch waits to fill")
    group.add_argument("--max-ongoing", type=per_stage(int), default={}, help="requests running per replica")
    group.add_argument("--max-queued", type=per_stage(int), default={}, help="requests waiting per caller (-1: any)")
    group.add_argument(
        "--torch-threads",
        type=per_stage(positive),
        default={},
        help="torch threads per replica (default: as Ray sets, 1 per reserved CPU; images equal a default "
        "`generate` up to one uint8 level unless the thread counts match)",
    )
    group.add_argument(
        "--request-memory", type=memory_size, default=None, help="memory one request may use, e.g. 8GiB (see docs)"
    )
    tools = p.add_argument_group("without serving")
    tools.add_argument("--print-config", metavar="FILE", help="write the Ray Serve config YAML ('-': stdout), exit")
    tools.add_argument("--propose-replicas", metavar="BENCH_JSON", help="replica counts from `ifengine bench cascade`")
    tools.add_argument("--total-replicas", type=int, default=4, help="replicas to share out (--propose-replicas)")
    p.set_defaults(run=run)


def serve_config(args):
    from ..serve import ModelSource, ServeConfig

    source = ModelSource(
        stage1=args.stage1,
        stage2=args.stage2,
        stage3=args.stage3,
        variant=args.variant,
        device=args.device,
        dtype=args.dtype,
        artifacts=args.artifacts,
        engines=args.engines,
        providers=args.providers,
    )
    from ..serve import Limits

    limits = Limits(request_memory=args.request_memory)
    config = ServeConfig(
        layout=args.layout,
        source=source,
        api_key=args.api_key,
        limits=limits,
        safety=not args.no_safety,
        lora_dir=args.lora_dir,
    )
    flags = {
        "replicas": args.replicas,
        "num_gpus": args.gpus,
        "num_cpus": args.cpus,
        "max_batch_size": args.max_batch,
        "batch_wait_timeout_s": {k: v / 1000 for k, v in args.batch_wait_ms.items()},
        "max_ongoing_requests": args.max_ongoing,
        "max_queued_requests": args.max_queued,
        "torch_threads": args.torch_threads,
    }
    changes = {}
    for part in PARTS:
        fields = {f: v.get(part, v.get("*")) for f, v in flags.items()}
        fields = {f: v for f, v in fields.items() if v is not None}
        if "max_batch_size" in fields and "max_ongoing_requests" not in fields:
            # a replica batches only what it runs: keep room for a full batch plus the next one filling
            base = getattr(config, part).max_ongoing_requests
            fields["max_ongoing_requests"] = max(base, 2 * fields["max_batch_size"])
        if fields:
            changes[part] = dataclasses.replace(getattr(config, part), **fields)
    return dataclasses.replace(config, **changes)


def run(args) -> int:
    if args.propose_replicas:
        return _propose(args)
    config = serve_config(args)
    if args.print_config:
        return _print_config(config, args)
    if args.lora_dir and not Path(args.lora_dir).is_dir():  # checked here, before Ray starts; a printed
        # config may name a folder that exists only on the cluster
        raise ValueError(f"--lora-dir {args.lora_dir}: no such folder (it holds NAME.safetensors LoRA files)")
    return _serve(config, args)


def _propose(args) -> int:
    from ..serve.replicas import propose_from_file

    result = propose_from_file(args.propose_replicas, args.total_replicas)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    flag = ",".join(f"{k}={v}" for k, v in result["replicas"].items())
    sys.stdout.write(f"ifengine serve --replicas {flag} ...\n")
    return 0


def _print_config(config, args) -> int:
    from ..bench.report import write_text
    from ..serve.deploy_config import config_yaml

    text = config_yaml(config, host=args.host, port=args.port)
    if args.print_config == "-":
        sys.stdout.write(text)
    else:
        write_text(Path(args.print_config), text)
        sys.stdout.write(f"{args.print_config}\n")
    return 0


def _serve(config, args) -> int:
    _stop_on_sigterm()  # first: a stop signal during start-up must still shut Ray down (and its agents)
    started = False
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address and args.host in LOOPBACK:
        _local_ray_on_loopback()
    try:
        from ..errors import require_extra

        require_extra(("ray", "fastapi"), "serve", "ifengine serve")  # one line naming the extra
        import ray
        from ray import serve

        from ..serve import build_app

        started = not ray.is_initialized()
        if started:
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=args.num_cpus, include_dashboard=False)  # no dashboard: one service less
            _stop_on_sigterm()  # ray.init installs its own handler (sys.exit(15)); ours stops cleanly
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(config), name="ifengine", route_prefix="/")
        log.info("serving on http://%s:%d (docs: /docs); Ctrl-C stops", args.host, args.port)
        if config.source.is_demo:
            log.warning("serving the tiny DEMO cascade (random weights): its pictures are noise")
        _wait()
    except KeyboardInterrupt:
        log.info("stopping")
    except SystemExit as stop:  # Ray's handler, when the signal came while ray.init ran
        if stop.code != signal.SIGTERM:
            raise
        log.info("stopping")
    finally:
        _shutdown(started, address)
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _local_ray_on_loopback() -> None:
    """A loopback server starts a loopback Ray. Ray replaces a loopback node address with the machine's
    (``resolve_ip_for_localhost``) unless its multi-node support is off, which is what this variable (read
    when ``ray`` is imported, and inherited by its processes) turns off: every Ray service then listens on
    127.0.0.1 only (measured with psutil: tests/test_serve_hostile.py). A Ray joined with ``--address`` or a
    server bound to another address keeps Ray's own defaults."""
    if "ray" in sys.modules:
        log.warning("ray was imported before `serve` started: its services may listen beyond loopback")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _shutdown(started: bool, address: str | None) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the shutdown short
    ray = sys.modules.get("ray")
    if not hasattr(ray, "shutdown"):  # never imported, or a stop signal cut its import short: no node yet
        _reap_children()
        return
    try:
        from ray import serve
    except Exception as err:  # noqa: BLE001 - a half-imported ray.serve: stop the node all the same
        log.warning("ray.serve unavailable during stop: %s", err)
        serve = None
    if started and not address and serve is not None:
        try:
            serve.shutdown()
        except Exception as err:  # a half-started Serve: Ray's own shutdown below still stops the node
            log.warning("serve.shutdown during stop: %s", err)
    if started or ray.is_initialized():
        ray.shutdown()
    _reap_children()


def _reap_children() -> None:
    """Whatever this process started and Ray left behind (a stop during ray.init): terminated, then killed."""
    try:
        import psutil
    except ImportError:
        return
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a container's stop signal shuts down as cleanly as Ctrl-C


def _wait() -> None:
    import time

    while True:
        time.sleep(3600)
