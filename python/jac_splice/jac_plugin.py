"""jaclang plugin: Jac's ``import:py numpy;`` (and Python imports) of configured modules go to a
module server or jac-orc.

Configuration (environment):

* ``JAC_SPLICE_SERVER``: module server ("127.0.0.1:50051") or jac-orc ("http://jac-orc:8000").
* ``JAC_SPLICE_MODULES``: comma-separated module names to import remotely, or
* ``JAC_SPLICE_CONFIG``: a JSON file ``{"server": "...", "modules": ["numpy"], "token": "...",
  "ca": "ca.pem", "servers": {"scipy": "127.0.0.1:50052"}, "deployments": {"numpy":
  "np-deployment"}, "namespace": "..."}`` (environment wins; ``servers`` sends a module to its
  own server). ``modules`` may instead map each module to its settings for deploying it on
  first import through jac-orc: ``{"numpy": {"packages": ["numpy"], "cpu": "500m", "memory":
  "512Mi", "replicas": 1, "idle_timeout": "10m"}, "scipy": {"deploy": false}}`` (``deploy``
  defaults to true; ``null`` settings deploy with the template's defaults).
* ``JAC_SPLICE_TOKEN``: the bearer token every call carries (a module server's call token, or
  jac-orc's token); without one each connection finds its own (see ``jac_splice.credentials``).
* ``JAC_SPLICE_CA``: PEM file of the CA to trust for ``https://`` servers (else the system's).

The hook is a ``sys.meta_path`` finder installed when jaclang loads its plugins; Jac compiles its
Python imports to ordinary imports, so the finder sees them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jac_splice.importer import RemoteImports, remote_imports

_installed: RemoteImports | None = None

DEPLOY_SETTINGS = frozenset(
    {"packages", "cpu", "cpu_limit", "memory", "replicas", "idle_timeout", "wait_timeout"}
)
"""What a module's entry in ``modules`` may set besides ``deploy``."""


def _deploy_settings(modules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The modules to deploy on first import, with their settings (``deploy`` removed)."""
    out: dict[str, dict[str, Any]] = {}
    for name, given in modules.items():
        settings = dict(given or {})
        deploy = settings.pop("deploy", True)
        if not isinstance(deploy, bool):
            raise TypeError(f"JAC_SPLICE_CONFIG: modules.{name}.deploy must be true or false")
        unknown = sorted(set(settings) - DEPLOY_SETTINGS)
        if unknown:
            raise ValueError(
                f"JAC_SPLICE_CONFIG: modules.{name} has unknown settings {unknown}; "
                f"known: deploy, {', '.join(sorted(DEPLOY_SETTINGS))}"
            )
        if deploy:
            out[name.strip()] = settings
    return out


def load_config(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    path = env.get("JAC_SPLICE_CONFIG")
    if path:
        with open(path, encoding="utf-8") as f:
            config.update(json.load(f))
    if env.get("JAC_SPLICE_SERVER"):
        config["server"] = env["JAC_SPLICE_SERVER"]
    if env.get("JAC_SPLICE_MODULES"):
        config["modules"] = env["JAC_SPLICE_MODULES"]
    for key in ("token", "ca"):
        if env.get(f"JAC_SPLICE_{key.upper()}"):
            config[key] = env[f"JAC_SPLICE_{key.upper()}"]
    modules = config.get("modules", [])
    if isinstance(modules, str):
        modules = modules.split(",")
    if isinstance(modules, dict):
        config["deploy"] = _deploy_settings(modules)
    config["modules"] = [m.strip() for m in modules if m.strip()]
    return config


def install(environ: dict[str, str] | None = None) -> RemoteImports | None:
    """Installs the finder once, if a server and modules are configured."""
    global _installed
    if _installed is not None:
        return _installed
    config = load_config(environ)
    modules: list[str] = config["modules"]
    if not modules or not config.get("server"):
        return None
    _installed = remote_imports(
        modules,
        config["server"],
        token=config.get("token"),
        deployments=config.get("deployments"),
        namespace=config.get("namespace"),
        servers=config.get("servers"),
        ca=config.get("ca"),
        deploy=config.get("deploy"),
    )
    return _installed


class SplicePlugin:
    """Registered under the ``jac`` entry-point group; loading it installs the import hook."""


install()
