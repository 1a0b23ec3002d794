"""Process environment for offline, loopback-only runs of Flower and Ray."""

import os

# Flower 1.39 and Ray read these at import or start-up time. Each one switches off an
# outbound connection (update check, telemetry, usage stats) or a runtime `pip install`.
OFFLINE_ENVIRONMENT = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def configure_offline_environment() -> None:
    """Set the variables that keep Flower and Ray offline, without overriding the user's."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
