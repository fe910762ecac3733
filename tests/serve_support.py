"""One local Ray Serve for the serving tests: loopback only, bounded memory, always shut down."""

import contextlib
import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_serve(app_args: dict | None = None, num_cpus: int = 2):
    """A local Ray with Serve's proxy on 127.0.0.1 (and, given ``app_args``, the ifengine application
    built from that ServeConfig dict); yields the base URL. Ray is shut down however the block ends."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    port = free_port()
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if app_args is not None:
            from ifengine.serve import app

            # through the `serve run ifengine.serve:app` builder, from the config's plain-dict form
            serve.run(app(app_args), name="ifengine", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
