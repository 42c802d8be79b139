"""Where aigw finds its files: config discovery, admin socket, state database.

Kept free of heavy imports: client commands use it and must start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "aigw"


def user_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.yaml"


def discover_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """`--config` > `$AIGW_CONFIG` > `<user_config_dir>/aigw/config.yaml` > None (built-in)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("AIGW_CONFIG")
    if env:
        return Path(env)
    candidate = user_config_path()
    return candidate if candidate.is_file() else None


def default_admin_socket() -> Path:
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp/runtime-<uid>,
    # which is what we want on a bare machine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime = platformdirs.user_runtime_dir(APP)
    return Path(runtime) / "admin.sock"


def default_state_path() -> Path:
    return Path(platformdirs.user_data_dir(APP)) / "state.db"
