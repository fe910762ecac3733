"""The Ray Serve config file (``serve deploy FILE``, KubeRay's ``serveConfigV2``) for a ServeConfig.

The application is built by ``ifengine.serve:app`` from ``args`` (the whole ServeConfig), and each
deployment's scaling fields are repeated under ``deployments`` where operators expect to edit them; Ray
applies those over the code's values. The API key is never written: set $IFENGINE_API_KEY through the
runtime environment instead.
"""

from __future__ import annotations

import dataclasses

from .config import ServeConfig


def deployment_names(config: ServeConfig) -> dict[str, str]:
    """Deployment name -> the ServeConfig field that configures it."""
    if config.layout == "single":
        return {"cascade": "single", "ingress": "ingress"}
    return {n: n for n in ("text", "stage1", "stage2", "stage3", "ingress")}


def config_dict(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> dict:
    args = dataclasses.replace(config, api_key=None).to_dict()
    deployments = []
    for name, field in deployment_names(config).items():
        opts = getattr(config, field).deployment_options()
        deployments.append({"name": name, **opts})
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": "ifengine",
                "route_prefix": "/",
                "import_path": "ifengine.serve:app",
                "args": args,
                "deployments": deployments,
            }
        ],
    }


def config_yaml(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    import yaml

    head = "# Ray Serve config for `serve deploy` (written by `ifengine serve --print-config`)\n"
    return head + yaml.safe_dump(config_dict(config, host, port), sort_keys=False)
