"""The cascade on Ray Serve: an OpenAI-style images API over one deployment per stage.

``app(...)`` builds the Ray Serve application (for ``serve.run``, ``serve run ifengine.serve:app`` and
the ``serve deploy`` file ``ifengine serve --print-config`` writes); ``ifengine serve`` starts it.
Needs the ``serve`` extra (ray[serve], fastapi, python-multipart).
"""

from __future__ import annotations

from .config import Limits, ModelSource, ServeConfig, StageConfig
from .models import model_info

__all__ = ["Limits", "ModelSource", "ServeConfig", "StageConfig", "app", "build_app"]


def build_app(config: ServeConfig):
    """The Ray Serve application for ``config``: the ingress bound to its stage deployments."""
    # ray, fastapi: the serve extra, needed only when an application is built
    from .http import build_ingress
    from .workers import CascadeWorker, StageWorker

    config = config.with_env_key()
    info = model_info(config.source)
    handles = {}
    if config.layout == "single":
        whole = CascadeWorker.options(name="cascade", **config.single.deployment_options())
        handles["single"] = whole.bind(config.source, config.single, config)
    else:
        for part in ("text", "stage1", "stage2", "stage3"):
            if part == "text" or int(part[-1]) in info.stages:
                cfg = getattr(config, part)
                worker = StageWorker.options(name=part, **cfg.deployment_options())
                handles[part] = worker.bind(part, config.source, cfg, config)
    ingress = build_ingress(config).options(name="ingress", **config.ingress.deployment_options())
    return ingress.bind(info, **handles)


def app(args: dict | None = None):
    """Application builder for ``serve run ifengine.serve:app`` / ``serve deploy``: ``args`` is
    ``ServeConfig.to_dict()`` (or any part of it); nothing given serves the demo cascade."""
    return build_app(ServeConfig.from_dict(dict(args or {})))
