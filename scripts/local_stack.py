"""Writes the local stack's config file for `scripts/preview-local`, outside git.

The committed `Pulumi.local.yaml` plus: the host key and deploy key of the running local target
(when this machine can start it: root), and a throwaway Pulumi secret for every secret key the
stack needs, set through `pulumi config set --secret` with the value on stdin.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from components.config import APP_SECRET_KEYS, NAMESPACE, REGISTRY_KEY, SSH_KEY  # noqa: E402


def local_target_keys(state_dir: Path) -> tuple[str | None, str]:
    """(host key, private key): the local target's when it can run here, else a throwaway key."""
    if os.geteuid() == 0:
        from embedded_default.target import build_app_versions, ensure_target

        target = ensure_target()
        build_app_versions(target)
        return target.ssh_host_key, target.ssh_private_key
    key = state_dir / "local-deploy-key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    print(
        "not root: the local target (registry, sshd) cannot be started here, so the preview's lookup "
        "of the pinned version in 127.0.0.1:5000 will fail; run as root to preview against it",
        file=sys.stderr,
    )
    return None, key.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pulumi", required=True)
    parser.add_argument("--config-file", required=True, type=Path)
    args = parser.parse_args()
    config_file: Path = args.config_file

    committed = yaml.safe_load((PROJECT_DIR / "Pulumi.local.yaml").read_text())
    existing = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    host_key, private_key = local_target_keys(config_file.parent)

    document = dict(committed)
    if existing.get("encryptionsalt"):
        document["encryptionsalt"] = existing["encryptionsalt"]
    config = dict(committed["config"])
    config.update({k: v for k, v in (existing.get("config") or {}).items() if isinstance(v, dict) and "secure" in v})
    if host_key:
        config[f"{NAMESPACE}:server"] = {**config[f"{NAMESPACE}:server"], "hostKey": host_key}
    document["config"] = config
    old_umask = os.umask(0o077)
    try:
        config_file.write_text(yaml.safe_dump(document, sort_keys=False))
    finally:
        os.umask(old_umask)

    values = {name: secrets.token_urlsafe(24) for name in APP_SECRET_KEYS}
    values["googleEncryptionKey"] = secrets.token_hex(32)
    values[REGISTRY_KEY] = "local-registry-needs-no-password"
    values[SSH_KEY] = private_key
    for name, value in values.items():
        if f"{NAMESPACE}:{name}" in config and name != SSH_KEY:
            continue
        subprocess.run(
            [args.pulumi, "config", "set", "--secret", "--stack", "local", "--config-file", str(config_file), name],
            input=value,
            text=True,
            check=True,
            cwd=PROJECT_DIR,
        )


if __name__ == "__main__":
    main()
