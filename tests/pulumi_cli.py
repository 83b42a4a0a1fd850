"""How tests run the real Pulumi CLI: a file backend and a Pulumi home under `root`, offline."""

from __future__ import annotations

from pathlib import Path

from embedded_default.workspace import file_backend_url

PASSPHRASE = "test-passphrase-not-a-secret"


def offline_env(root: Path) -> dict[str, str]:
    """The CLI's environment: state in `root/state`, plugins in `root/pulumi-home`, no update check or download."""
    return {
        "PULUMI_BACKEND_URL": file_backend_url(root / "state"),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_HOME": str(root / "pulumi-home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
