"""The proxy's config, as rendered for every stage, is valid nginx: production's and staging's (bridge
networking, Docker's DNS) are checked here, on the local target's nginx, before a server ever loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components import config, server_files
from embedded_default.target import LocalTarget
from tests import kit


@pytest.mark.parametrize("stack", ["production", "staging", "local"])
def test_the_rendered_proxy_config_is_valid_nginx(target: LocalTarget, tmp_path: Path, stack: str) -> None:
    raw, secret_keys = kit.stack_config(stack)
    # Production declares staging's environments, so it reads staging's stack file too.
    plain = config.load(stack, raw, set(secret_keys), {"staging": kit.stack_file("staging")["config"]}).plain
    for path, content in server_files.proxy_files(plain.app, plain.release).items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(content)
    proxy = tmp_path / server_files.PROXY_DIR
    (proxy / "live.conf").write_text((proxy / "green.conf").read_text())
    proxy.chmod(0o755)
    mount = f"{proxy}:{server_files.PROXY_MOUNT}:ro"
    nginx = ["nginx", "-t", "-c", f"{server_files.PROXY_MOUNT}/nginx.conf", "-e", "stderr"]
    done = target.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        "65534:65534",
        "-v",
        mount,
        target.proxy_image,
        *nginx,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "test is successful" in done.stderr.decode()
