"""``python -m embedded_default.target up|down|status``: the loopback deploy target by hand. The
standard library only: the system's python3 runs it without the venv (scripts/remove-caches)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from embedded_default.target import build_app_versions, ensure_target, stop_target, target_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedded_default.target",
        description="The loopback deploy target of the end-to-end tests.",
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--no-apps", action="store_true", help="up: skip building the stand-in app versions")
    args = parser.parse_args(argv)
    if args.action == "down":
        stop_target()
        print(json.dumps(target_status(), indent=2))
        return 0
    if args.action == "status":
        status = target_status()
        print(json.dumps(status, indent=2))
        return 0 if all(pid is not None for pid in status.values()) else 1
    started = time.monotonic()
    target = ensure_target()
    info: dict[str, object] = {
        "ssh": f"{target.ssh_user}@{target.ssh_host}:{target.ssh_port}",
        "ssh_private_key_path": target.ssh_private_key_path,
        "ssh_host_key": target.ssh_host_key,
        "docker_host": target.docker_host,
        "registry": target.registry,
        "postgres_image": target.postgres_image,
        "proxy_image": target.proxy_image,
    }
    if not args.no_apps:
        info["app_versions"] = build_app_versions(target)
    info["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(info, indent=2))
    print(f"try: DOCKER_HOST={target.docker_host} docker ps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
