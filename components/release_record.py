"""Published releases on GitHub: one per version the stage has released, never deleted by a rollback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_github as github


@dataclass(frozen=True)
class ReleaseRecordArgs:
    repository: str
    releases: Mapping[str, str]
    """Version -> the commit its tag points at."""
    provider: github.Provider
    released_after: pulumi.Resource
    """The step that makes a version live: a release is published only once it serves."""


class ReleaseRecord(pulumi.ComponentResource):
    releases: dict[str, github.Release]

    def __init__(self, name: str, args: ReleaseRecordArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:release_record:ReleaseRecord", name, None, opts)
        self.releases = {
            version: github.Release(
                f"{name}-{version}",
                repository=args.repository,
                tag_name=version,
                target_commitish=commit,
                name=version,
                draft=False,
                prerelease=False,
                generate_release_notes=True,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    provider=args.provider,
                    retain_on_delete=True,
                    depends_on=[args.released_after],
                ),
            )
            for version, commit in sorted(args.releases.items())
        }
        self.register_outputs({"versions": sorted(self.releases)})
