"""Apps are stevedore plugins (namespace ``dragonflow.apps``), enabled by name in config
(``[controller] apps``). Order does not matter: stages, not apps, order the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stevedore import named

from dragonflow.apps.base import App
from dragonflow.conf import CORE_APPS

NAMESPACE = "dragonflow.apps"
DEFAULT_APPS = CORE_APPS  # [controller] apps' default


def load_apps(names: Sequence[str] = DEFAULT_APPS) -> list[App]:
    missing: list[str] = []
    mgr: Any = named.NamedExtensionManager(
        NAMESPACE, names=list(names), invoke_on_load=True, name_order=True,
        on_missing_entrypoints_callback=lambda n: missing.extend(n))
    if missing:
        raise ValueError(f"[controller] apps: unknown app(s) {sorted(missing)}")
    return [ext.obj for ext in mgr]


def default_apps() -> list[App]:
    return load_apps(DEFAULT_APPS)
