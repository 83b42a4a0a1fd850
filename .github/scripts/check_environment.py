"""Fails closed when the GitHub environment a job runs in lacks the protection the job relies on.

GitHub creates an environment that a workflow names but that does not exist yet, with no
protection at all. The stacks declare every environment the workflows name
(components/github_environment.py), but before a stack's first `pulumi up`, or after a hand
edit, an environment can be bare or loosened: the job then stops at its start, naming what is
missing, before it reads a secret into a command or touches a stack.

    gh api repos/OWNER/REPO/environments/NAME | python3 check_environment.py --environment NAME \
        --require reviewers --require no-admin-bypass --require no-self-review \
        --require branch-policy --branch main --branch-policies POLICIES.json

POLICIES.json is the answer of `gh api repos/OWNER/REPO/environments/NAME/deployment-branch-policies`.
.github/scripts/check-environment fetches both and calls this.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN_NOTE = (
    "required reviewers need a public repository or, for a private or internal one, GitHub Enterprise "
    "(README, One-time setup)"
)
# fnmatch-style characters GitHub's branch policies read as a pattern: a policy with one admits more than a name.
PATTERN_CHARACTERS = frozenset("*?[]")


@dataclass(frozen=True)
class Environment:
    settings: dict[str, Any]
    """GitHub's answer for the environment."""
    branch_policies: list[dict[str, Any]]
    """Its deployment branch policies (name, type)."""
    branch: str | None
    """The one branch it may admit."""


def _reviewer_rules(env: Environment) -> list[dict[str, Any]]:
    rules = env.settings.get("protection_rules") or []
    return [rule for rule in rules if rule.get("type") == "required_reviewers" and rule.get("reviewers")]


def _reviewers(env: Environment) -> str | None:
    return None if _reviewer_rules(env) else f"at least one required reviewer; {PLAN_NOTE}"


def _no_admin_bypass(env: Environment) -> str | None:
    if env.settings.get("can_admins_bypass") is False:
        return None
    return "'Allow administrators to bypass' switched off (canAdminsBypass: false)"


def _no_self_review(env: Environment) -> str | None:
    rules = _reviewer_rules(env)
    if rules and all(rule.get("prevent_self_review") is True for rule in rules):
        return None
    return "'Prevent self-review' switched on (whoever started a run never approves it; preventSelfReview: true)"


def _branch_policy(env: Environment) -> str | None:
    policy = env.settings.get("deployment_branch_policy") or {}
    names = sorted(str(p.get("name")) for p in env.branch_policies if p.get("type", "branch") == "branch")
    tags = sorted(str(p.get("name")) for p in env.branch_policies if p.get("type", "branch") != "branch")
    if policy.get("custom_branch_policies") is True and names == [env.branch] and not tags:
        return None
    patterns = [name for name in names if PATTERN_CHARACTERS & set(name)]
    received = ", ".join([*names, *(f"tag {tag}" for tag in tags)]) or "none"
    return f"a deployment branch policy admitting exactly the branch {env.branch!r}; received {received}" + (
        f" (patterns admit more than one branch: {', '.join(patterns)})" if patterns else ""
    )


REQUIREMENTS: dict[str, Callable[[Environment], str | None]] = {
    "reviewers": _reviewers,
    "no-admin-bypass": _no_admin_bypass,
    "no-self-review": _no_self_review,
    "branch-policy": _branch_policy,
}


def problems(environment: Environment, required: list[str]) -> list[str]:
    return [problem for name in required if (problem := REQUIREMENTS[name](environment)) is not None]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--environment", required=True)
    parser.add_argument("--require", action="append", choices=sorted(REQUIREMENTS), default=[])
    parser.add_argument("--branch", help="the one branch the environment may admit (with --require branch-policy)")
    parser.add_argument("--branch-policies", help="the environment's deployment branch policies (GitHub's JSON)")
    args = parser.parse_args(argv)
    if "branch-policy" in args.require and not (args.branch and args.branch_policies):
        parser.error("--require branch-policy needs --branch and --branch-policies")
    try:
        settings = json.load(sys.stdin)
        policies = json.loads(Path(args.branch_policies).read_text()) if args.branch_policies else {}
    except (json.JSONDecodeError, OSError):
        print(f"::error::could not read the GitHub environment {args.environment!r} (no JSON from the API)")
        return 1
    environment = Environment(settings, list(policies.get("branch_policies") or []), args.branch)
    missing = problems(environment, args.require)
    for problem in missing:
        print(
            f"::error::environment {args.environment!r} lacks {problem}. Declare it in the stack and run its "
            "`pulumi up` (docs/workflows.md, One-time GitHub set-up)"
        )
    if not missing:
        print(f"environment {args.environment!r} has {', '.join(args.require) or 'no required protection'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
