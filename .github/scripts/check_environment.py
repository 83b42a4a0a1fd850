"""Fails closed when the GitHub environment a job runs in lacks the protection the job relies on.

GitHub creates an environment that a workflow names but that does not exist yet, with no
protection at all. The stacks declare every environment the workflows name
(components/github_environment.py), but before a stack's first `pulumi up`, or after a hand
edit, an environment can be bare: the job then stops at its start, naming what is missing,
before it reads a secret into a command or touches a stack.

    gh api repos/OWNER/REPO/environments/NAME | python3 check_environment.py --environment NAME \
        --require reviewers --require no-admin-bypass --require branch-policy
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

PLAN_NOTE = (
    "required reviewers need a public repository or, for a private or internal one, GitHub Enterprise "
    "(README, One-time setup)"
)


def _reviewers(env: dict[str, Any]) -> bool:
    return any(
        rule.get("type") == "required_reviewers" and rule.get("reviewers") for rule in env.get("protection_rules") or []
    )


def _no_admin_bypass(env: dict[str, Any]) -> bool:
    return env.get("can_admins_bypass") is False


def _branch_policy(env: dict[str, Any]) -> bool:
    policy = env.get("deployment_branch_policy") or {}
    return policy.get("custom_branch_policies") is True


REQUIREMENTS: dict[str, tuple[Callable[[dict[str, Any]], bool], str]] = {
    "reviewers": (_reviewers, f"at least one required reviewer; {PLAN_NOTE}"),
    "no-admin-bypass": (_no_admin_bypass, "'Allow administrators to bypass' switched off (canAdminsBypass: false)"),
    "branch-policy": (_branch_policy, "a deployment branch policy naming the branches that may deploy"),
}


def problems(environment: dict[str, Any], required: list[str]) -> list[str]:
    return [described for name in required for check, described in [REQUIREMENTS[name]] if not check(environment)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environment", required=True)
    parser.add_argument("--require", action="append", choices=sorted(REQUIREMENTS), default=[])
    args = parser.parse_args(argv)
    try:
        environment = json.load(sys.stdin)
    except json.JSONDecodeError:
        print(f"::error::could not read the GitHub environment {args.environment!r} (no JSON from the API)")
        return 1
    missing = problems(environment, args.require)
    for problem in missing:
        print(
            f"::error::environment {args.environment!r} lacks {problem}. Declare it in the stack and run its "
            "first `pulumi up` from a terminal (docs/workflows.md, One-time GitHub set-up)"
        )
    if not missing:
        print(f"environment {args.environment!r} has {', '.join(args.require) or 'no required protection'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
