"""`python -m embedded_default.backups up|down|status|remove`: the local target's backup repository by hand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from embedded_default.backups import (
    ensure_backup_repository,
    remove_backup_repository,
    repository_pid,
    stop_backup_repository,
)
from embedded_default.target import ensure_target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_default.backups", description=__doc__)
    parser.add_argument("action", choices=("up", "down", "status", "remove"))
    args = parser.parse_args(argv)
    if args.action == "down":
        stop_backup_repository()
    elif args.action == "remove":
        remove_backup_repository(ensure_target())
    elif args.action == "up":
        repository = ensure_backup_repository(ensure_target())
        print(
            json.dumps(
                {
                    "endpoint": f"https://{repository.host}:{repository.port}",
                    "name": repository.endpoint,
                    "bucket": repository.bucket,
                    "image": repository.image,
                },
                indent=2,
            )
        )
    print(json.dumps({"s3proxy": repository_pid()}))
    return 0 if args.action != "status" or repository_pid() else 1


if __name__ == "__main__":
    sys.exit(main())
