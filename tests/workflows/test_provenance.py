"""Production records a version's digests only after verifying that staging's release built them from a commit on
the app's develop: a tag someone else moved (with staging's registry token, say) is refused before anything is
recorded, so before any server step.

The attestations are GitHub artifact attestations (Sigstore, signed with the workflow's OIDC identity): they cannot
be created offline, so `gh attestation verify` is a stand-in here that answers what the real one prints for an
attestation it verified (`--format json`) and fails for a digest with none. What runs for real: the scripts'
policy (the flags that pin the signer workflow, its branch and the predicate type; the predicate's role and app
commit; the commit's place on the app's develop), the real Pulumi CLI reading the stacks, and a real git history.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflows.conftest import AppRepository, Runner, install
from tests.workflows.model import SCRIPT_DIR, job

APP_DIGEST = "sha256:" + "1" * 64
MIGRATE_DIGEST = "sha256:" + "2" * 64
MOVED_DIGEST = "sha256:" + "6" * 64
REPOSITORY = "ghcr.io/kametrix-org/kametrix/kametrix"
APP_REPOSITORY = "kametrix-org/kametrix"

FAKE_DOCKER = (
    """#!/usr/bin/env bash
# A registry holding the production stack's images: logs each call and the login's stdin.
printf '%s\\n' "$*" >>"$RUNNER_TEMP/docker-calls"
case "$1" in
  login) cat >>"$RUNNER_TEMP/docker-login-stdin"; [[ -d "$DOCKER_CONFIG" ]] ;;
  buildx)
    case "$4" in
      */kametrix:v1.5.0) cat "$RUNNER_TEMP/tag-v1.5.0" ;;
      */kametrix:v1.5.0-migrate) echo \""""
    + MIGRATE_DIGEST
    + """" ;;
      *) echo "ERROR: not found" >&2; exit 1 ;;
    esac ;;
esac
"""
)

# `gh attestation verify oci://IMAGE@sha256:HEX ... --format json`: the verified attestations of that digest
# ($RUNNER_TEMP/attestations/HEX.json), or gh's failure when it has none.
FAKE_GH = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>"$RUNNER_TEMP/gh-calls"
[[ "$1 $2" == "attestation verify" ]] || exit 2
answer="$RUNNER_TEMP/attestations/${3##*@sha256:}.json"
[[ -f "$answer" ]] || { echo "Error: failed to fetch attestations: no attestations found" >&2; exit 1; }
cat "$answer"
"""


def verified(predicate: dict[str, str]) -> list[dict[str, object]]:
    """What `gh attestation verify --format json` prints for one attestation that passed its policy."""
    statement = {"predicateType": "(checked by gh)", "subject": [], "predicate": predicate}
    return [{"verificationResult": {"statement": statement, "signature": {"certificate": {}}}}]


def staging_predicate(role: str, commit: str, version: str = "staging-2222222") -> dict[str, str]:
    return {
        "role": role,
        "version": version,
        "appRepository": APP_REPOSITORY,
        "appCommit": commit,
        "appBranch": "develop",
    }


@pytest.fixture
def app_history(app_repository: AppRepository, tmp_path: Path) -> tuple[Path, str, str]:
    """A clone of the app with its branches: (dir, a commit on develop, a commit only on a feature branch)."""
    history = app_repository.clone(tmp_path / "work-app-history")
    return history, app_repository.on_develop[-1], app_repository.unreviewed


def attest(runner: Runner, digest: str, predicate: dict[str, str]) -> None:
    folder = runner.work.parent / "attestations"
    folder.mkdir(exist_ok=True)
    (folder / f"{digest.removeprefix('sha256:')}.json").write_text(json.dumps(verified(predicate)))


def attest_build(runner: Runner, commit: str) -> None:
    """What deploy-staging attests for the two images of v1.5.0's tags, built from `commit`."""
    attest(runner, APP_DIGEST, staging_predicate("app", commit))
    attest(runner, MIGRATE_DIGEST, staging_predicate("migrate", commit))


@pytest.fixture
def registry(stack_runner: Runner, bin_dir: Path) -> Runner:
    """The production stack with its registry credential, a registry whose v1.5.0 names APP_DIGEST, and gh."""
    install(bin_dir, "docker", FAKE_DOCKER)
    install(bin_dir, "gh", FAKE_GH)
    (bin_dir / "jq").symlink_to("/usr/bin/jq")
    stack_runner.pulumi("config", "set", "--secret", "--stack", "production", "registryPassword", "TESTSECRET-reg")
    (stack_runner.work.parent / "tag-v1.5.0").write_text(APP_DIGEST + "\n")
    return stack_runner


def resolve(runner: Runner, commit: str, history: Path, version: str = "v1.5.0") -> tuple[int, dict[str, str], str]:
    result = runner.script(
        "resolve-digests",
        *("--stage", "production", "--version", version, "--commit", commit, "--app-history", str(history)),
        env={"APP_REPOSITORY": APP_REPOSITORY, "GH_TOKEN": "x"},
    )
    return result.code, result.outputs, result.log


def test_production_records_a_new_versions_digests_once_staging_is_shown_to_have_built_them(
    registry: Runner, app_history: tuple[Path, str, str]
) -> None:
    history, commit, _ = app_history
    attest_build(registry, commit)
    code, outputs, log = resolve(registry, commit, history)
    assert code == 0, log
    assert outputs == {"app_digest": APP_DIGEST, "migrate_digest": MIGRATE_DIGEST}
    temp = registry.work.parent
    calls = (temp / "docker-calls").read_text()
    assert "login ghcr.io --username kametrix-deploy-bot --password-stdin" in calls, calls
    assert "TESTSECRET" not in calls + log, "the registry password reached an argument or the log"
    assert (temp / "docker-login-stdin").read_text().strip() == "TESTSECRET-reg"
    assert not list(temp.glob("docker-config.*")), "the step's Docker config (with the credential) was left behind"
    verifications = (temp / "gh-calls").read_text().splitlines()
    assert verifications[0].split() == [
        "attestation",
        "verify",
        f"oci://{REPOSITORY}@{APP_DIGEST}",
        *("--repo", "kametrix-org/kametrix-deploy"),
        *("--signer-workflow", "kametrix-org/kametrix-deploy/.github/workflows/deploy-staging.yml"),
        *("--source-ref", "refs/heads/develop"),
        *(
            "--predicate-type",
            "https://github.com/kametrix-org/kametrix-deploy/blob/main/docs/security.md#staging-build-v1",
        ),
        *("--format", "json"),
    ], "the signer is staging's release workflow, run from develop: nothing else may vouch for production's bytes"


def test_a_tag_moved_by_someone_else_is_refused_before_any_digest_is_recorded(
    registry: Runner, app_history: tuple[Path, str, str]
) -> None:
    """Staging's registry token can push v1.5.0 first: the bytes it names were never attested by deploy-staging."""
    history, commit, _ = app_history
    attest_build(registry, commit)
    (registry.work.parent / "tag-v1.5.0").write_text(MOVED_DIGEST + "\n")
    code, outputs, log = resolve(registry, commit, history)
    assert code != 0 and outputs == {}, "no digest reaches record-release"
    assert (
        f"{REPOSITORY}@{MOVED_DIGEST} has no valid attestation by kametrix-org/kametrix-deploy's deploy-staging.yml"
        in log
    )
    assert "a tag moved by someone else" in log


@pytest.mark.parametrize(
    ("app_predicate", "problem"),
    [
        (staging_predicate("migrate", "COMMIT"), "but not as the app image built from kametrix-org/kametrix@"),
        (staging_predicate("app", "3" * 40), "but not as the app image built from kametrix-org/kametrix@"),
        ({**staging_predicate("app", "COMMIT"), "appRepository": "someone/else"}, "but not as the app image"),
        ({**staging_predicate("app", "COMMIT"), "appBranch": "feature"}, "but not as the app image"),
    ],
)
def test_an_attestation_of_other_bytes_role_commit_or_branch_is_refused(
    registry: Runner, app_history: tuple[Path, str, str], app_predicate: dict[str, str], problem: str
) -> None:
    """A real attestation of another build (the migrate image under the app's tag, another commit) is no proof."""
    history, commit, _ = app_history
    attest(registry, APP_DIGEST, {k: v.replace("COMMIT", commit) for k, v in app_predicate.items()})
    attest(registry, MIGRATE_DIGEST, staging_predicate("migrate", commit))
    code, outputs, log = resolve(registry, commit, history)
    assert code != 0 and outputs == {} and problem in log, log


def test_a_version_whose_app_commit_is_not_on_the_apps_develop_is_refused(
    registry: Runner, app_history: tuple[Path, str, str]
) -> None:
    history, _, elsewhere = app_history
    attest_build(registry, elsewhere)
    code, outputs, log = resolve(registry, elsewhere, history)
    assert code != 0 and outputs == {}, log
    assert f"app commit {elsewhere} is not on kametrix-org/kametrix's develop" in log


def test_what_staging_attests_is_what_production_requires(registry: Runner, app_history: tuple[Path, str, str]) -> None:
    """staging-build writes the predicates deploy-staging attests; verify-provenance accepts exactly those."""
    history, commit, _ = app_history
    version = f"staging-{commit[:7]}"
    registry.deployed(
        "staging", {"imageRef": f"{REPOSITORY}@{APP_DIGEST}", "migrateImageRef": f"{REPOSITORY}@{MIGRATE_DIGEST}"}
    )
    built = registry.script(
        "staging-build",
        "--stage",
        "staging",
        "--version",
        version,
        "--commit",
        commit,
        env={"APP_REPOSITORY": APP_REPOSITORY},
    )
    assert built.code == 0, built.log
    assert built.outputs["repository"] == REPOSITORY
    assert (built.outputs["app_digest"], built.outputs["migrate_digest"]) == (APP_DIGEST, MIGRATE_DIGEST)
    for role, digest in (("app", APP_DIGEST), ("migrate", MIGRATE_DIGEST)):
        attest(registry, digest, json.loads(built.outputs[f"{role}_predicate"]))
        image = f"{built.outputs['repository']}@{built.outputs[f'{role}_digest']}"
        verified = registry.script(
            "verify-provenance",
            *("--image", image, "--role", role, "--commit", commit, "--app-history", str(history)),
            env={"APP_REPOSITORY": APP_REPOSITORY, "GH_TOKEN": "x"},
        )
        assert verified.code == 0, verified.log
    type_line = next(line for line in (SCRIPT_DIR / "lib.sh").read_text().splitlines() if "PREDICATE_TYPE=" in line)
    assert built.outputs["predicate_type"] in type_line


def test_staging_attests_both_images_it_built_and_production_verifies_before_recording() -> None:
    staging = job("deploy-staging.yml", "release").own_steps()
    names = [str(step.raw.get("name")) for step in staging]
    attests = [step for step in staging if step.uses.startswith("actions/attest@")]
    assert [step.raw["with"]["subject-digest"] for step in attests] == [
        "${{ steps.built.outputs.app_digest }}",
        "${{ steps.built.outputs.migrate_digest }}",
    ]
    assert all(step.raw["with"]["subject-name"] == "${{ steps.built.outputs.repository }}" for step in attests)
    assert names.index("pulumi up") < names.index("Read the build's images") < min(map(staging.index, attests))
    production = job("deploy-production.yml", "release").own_steps()
    names = [str(step.raw.get("name")) for step in production]
    digests = next(step for step in production if step.raw.get("id") == "digests")
    assert "--commit" in digests.run and "--app-history app-history" in digests.run
    assert digests.raw["if"] == "steps.recorded.outputs.commit == ''", "every new version is verified"
    later = production[production.index(digests) + 1 :]
    for step in later[: names.index("pulumi up") - production.index(digests)]:
        assert "if" not in step.raw, f"{step.raw.get('name')} would run after a refused provenance"
    assert names.index("Record the release") > production.index(digests) and names.index("pulumi up") > names.index(
        "Record the release"
    )
