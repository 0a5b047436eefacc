"""The node's configuration: settings from a file and the environment, and logging (with secrets
redacted)."""

from __future__ import annotations

from server.config._logging import configure_logging
from server.config._settings import (
    DEV_IDP_EXPOSED,
    AddressLimitSettings,
    ConfigError,
    Settings,
    TierSettings,
    load_settings,
    secret_setting_names,
)

__all__ = [
    "DEV_IDP_EXPOSED",
    "AddressLimitSettings",
    "ConfigError",
    "Settings",
    "TierSettings",
    "configure_logging",
    "load_settings",
    "secret_setting_names",
]
