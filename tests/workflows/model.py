"""The workflows, their composite actions and their scripts, read the way GitHub reads them.

Not a test module: the policy modules beside it ask it which jobs exist, what each job runs (its own
steps and the steps of the local composite actions it uses, with the inputs it passes), which stack a
`pulumi` call names, and every concrete value an expression can take (matrix rows, choice inputs).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
ACTION_DIR = ROOT / ".github" / "actions"
# Composite actions whose logic no release App may change: an App token without the Workflows permission cannot
# write under .github/workflows/.
GUARD_DIR = WORKFLOW_DIR / "guards"
SCRIPT_DIR = ROOT / ".github" / "scripts"
WORKFLOW_PATHS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])
ACTION_PATHS = sorted([*ACTION_DIR.glob("*/action.yml"), *GUARD_DIR.glob("*/action.yml")])
SCRIPT_PATHS = sorted(path for path in SCRIPT_DIR.iterdir() if path.is_file())
STAGES = ("staging", "production")
BRANCH_OF_STAGE = {"staging": "develop", "production": "main"}

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# A `pulumi <subcommand>` command: at the start of a line, of a `$(...)` or after `if`/`!`; not a word in a
# comment or a message, nor `pulumi/actions`, `.pulumi`, `pulumi-version`.
PULUMI_CALL = re.compile(r"(?m)(?:^|\$\(|\bif\s|!\s)[ \t]*pulumi[ \t]+(?P<sub>[a-z][a-z-]*)(?P<rest>[^\n;|&)]*)")
STACK_FLAG = re.compile(r"(?:^|\s)(?:--stack|-s)(?:=|\s+)(?P<value>\"[^\"]*\"|'[^']*'|\S+)")
# Subcommands that work without a stack.
STACKLESS_SUBCOMMANDS = {"version", "login", "logout", "whoami", "plugin", "about", "install", "new", "policy"}
STATE_CHANGING = {"up", "update", "refresh", "destroy", "import"}
STATE_READING = {"preview"}
# The one conditional the workflows use to pick a value per stage: `inputs.stage == 'production' && 'a' || 'b'`,
# where each value is a literal or a variable (`vars.NAME`, kept as written).
CHOICE = re.compile(
    r"(?P<var>(?:inputs|matrix)\.\w+) == '(?P<value>[^']*)'"
    r" && (?:'(?P<then>[^']*)'|(?P<then_var>vars\.\w+)) \|\| (?:'(?P<else>[^']*)'|(?P<else_var>vars\.\w+))"
)
SCRIPT_CALL = re.compile(r"\.github/scripts/(?P<name>[\w.-]+)")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


WORKFLOWS = {path.name: load(path) for path in WORKFLOW_PATHS}
ACTIONS = {path.parent.name: load(path) for path in ACTION_PATHS}


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """`on:` — YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True."""
    raw = workflow.get("on", workflow.get(True))
    if isinstance(raw, str):
        return {raw: None}
    if isinstance(raw, list):
        return dict.fromkeys(raw)
    assert isinstance(raw, dict), "workflow has no `on:`"
    return raw


def normalize(text: Any) -> str:
    """`${{  inputs.stage }}` and `${{ inputs.stage }}` are the same expression."""
    return EXPRESSION.sub(lambda m: "${{ " + m.group(1) + " }}", str(text)).strip().strip("\"'")


def local_action(step: dict[str, Any]) -> str | None:
    uses = str(step.get("uses", ""))
    for prefix in ("./.github/actions/", "./.github/workflows/guards/"):
        if uses.startswith(prefix):
            return uses.removeprefix(prefix)
    return None


@dataclass
class Step:
    """A step as it runs: a job's own step, or a step of a local composite action it uses."""

    raw: dict[str, Any]
    job: Job
    via: str | None = None
    """The composite action it comes from."""
    inputs: dict[str, str] | None = None
    """What the job passed that action (`with:`)."""

    @property
    def run(self) -> str:
        return self._bind(str(self.raw.get("run", "")))

    @property
    def env(self) -> dict[str, str]:
        return {str(k): self._bind(str(v)) for k, v in (self.raw.get("env") or {}).items()}

    @property
    def uses(self) -> str:
        return str(self.raw.get("uses", ""))

    @property
    def with_(self) -> dict[str, Any]:
        return {
            str(k): self._bind(str(v)) if isinstance(v, str) else v for k, v in (self.raw.get("with") or {}).items()
        }

    def _bind(self, text: str) -> str:
        """An action's `${{ inputs.x }}` is what its caller passed."""
        if self.inputs is None:
            return text
        inputs = self.inputs

        def bind(match: re.Match[str]) -> str:
            name = match.group(1)
            return normalize(inputs.get(name, "")) if name in inputs else match.group(0)

        return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", bind, text)

    def value_of(self, shell_value: str) -> str:
        """`"$STAGE"` -> the value this step sees (step env, then job env, then workflow env)."""
        value = shell_value.strip().strip("\"'")
        match = re.fullmatch(r"\$\{?(\w+)\}?", value)
        if not match:
            return normalize(value)
        for scope in (self.env, self.job.env, self.job.workflow.get("env") or {}):
            if match.group(1) in scope:
                return normalize(scope[match.group(1)])
        return value  # a shell variable set inside the script

    def scripts(self) -> list[str]:
        """The .github/scripts this step runs."""
        return [m.group("name") for m in SCRIPT_CALL.finditer(self.run)]


@dataclass
class Job:
    workflow_name: str
    job_id: str
    raw: dict[str, Any]
    workflow: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.workflow_name}:{self.job_id}"

    @property
    def env(self) -> dict[str, Any]:
        return dict(self.raw.get("env") or {})

    @property
    def condition(self) -> str:
        return " ".join(str(self.raw.get("if", "")).split())

    def own_steps(self) -> list[Step]:
        return [Step(step, self) for step in self.raw.get("steps", [])]

    def steps(self) -> list[Step]:
        """Every step that runs, composite actions expanded in place."""
        result = []
        for step in self.own_steps():
            result.append(step)
            action = local_action(step.raw)
            if action is not None:
                passed = {k: str(v) for k, v in (step.raw.get("with") or {}).items()}
                result += [Step(inner, self, action, passed) for inner in ACTIONS[action]["runs"]["steps"]]
        return result

    def uses_action(self, name: str) -> list[Step]:
        return [step for step in self.own_steps() if local_action(step.raw) == name]

    def run_text(self) -> str:
        return "\n".join(step.run for step in self.steps())

    def script_text(self) -> str:
        """What the job runs, including the scripts its steps call."""
        called = {name for step in self.steps() for name in step.scripts()}
        return "\n".join([self.run_text(), *((SCRIPT_DIR / name).read_text() for name in sorted(called))])

    def pulumi_calls(self) -> list[tuple[str, str | None, str]]:
        """(subcommand, stack or None, source) for every pulumi call in the job's steps and scripts."""
        calls = []
        for step in self.steps():
            sources = [step.run, *((SCRIPT_DIR / name).read_text() for name in step.scripts())]
            for index, source in enumerate(sources):
                for match in PULUMI_CALL.finditer(logical_lines(source)):
                    flag = STACK_FLAG.search(" " + match.group("rest"))
                    stack = None
                    if flag and index == 0:
                        stack = step.value_of(flag.group("value"))
                    elif flag:  # a script: the stack is its --stage/--stack argument
                        stack = script_stack_argument(step)
                    calls.append((match.group("sub"), stack, match.group(0).strip()))
        return calls

    def stacks(self) -> set[str]:
        return {stack for sub, stack, _ in self.pulumi_calls() if stack and sub not in STACKLESS_SUBCOMMANDS}

    def touches(self, kinds: set[str]) -> bool:
        return any(sub in kinds for sub, _, _ in self.pulumi_calls())

    def environment(self) -> str | None:
        env = self.raw.get("environment")
        if env is None:
            return None
        return normalize(env["name"] if isinstance(env, dict) else env)

    def write_scopes(self) -> set[str]:
        permissions = self.raw.get("permissions", {})
        if isinstance(permissions, str):
            return {"*"} if permissions == "write-all" else set()
        return {scope for scope, level in permissions.items() if level == "write"}

    def expansions(self, texts: list[str]) -> list[list[str]]:
        """Every concrete value of `texts` together, for each value of the variables they use."""
        variables = sorted({m.group(1) for text in texts for m in EXPRESSION.finditer(text)})
        for variable in variables:
            assert re.fullmatch(r"(inputs|matrix)\.\w+", variable) or CHOICE.fullmatch(variable), (
                f"{variable!r} in {texts}: a stack may only come from a choice input or a matrix"
            )
        variables = sorted({_variable_of(m.group(1)) for text in texts for m in EXPRESSION.finditer(text)})
        inputs = [v.partition(".")[2] for v in variables if v.startswith("inputs.")]
        result = []
        for row in matrix_rows(self.raw):
            for values in itertools.product(*(input_domain(name, self.workflow) for name in inputs)):
                binding = {f"matrix.{k}": v for k, v in row.items()}
                binding |= {f"inputs.{name}": value for name, value in zip(inputs, values, strict=True)}

                def bind(match: re.Match[str], binding: dict[str, str] = binding) -> str:
                    choice = CHOICE.fullmatch(match.group(1))
                    if choice is not None:  # `x == 'a' && 'then' || 'else'`
                        branch = "then" if binding[choice.group("var")] == choice.group("value") else "else"
                        literal = choice.group(branch)
                        return literal if literal is not None else choice.group(f"{branch}_var")
                    assert match.group(1) in binding, f"{match.group(1)} is not set in every matrix row"
                    return binding[match.group(1)]

                result.append([EXPRESSION.sub(bind, text) for text in texts])
        return result


def _variable_of(expression: str) -> str:
    choice = CHOICE.fullmatch(expression)
    return choice.group("var") if choice else expression


def script_stack_argument(step: Step) -> str | None:
    match = re.search(r"--(?:stage|stack)\s+(\"[^\"]*\"|\S+)", logical_lines(step.run))
    return step.value_of(match.group(1)) if match else None


def jobs() -> Iterator[Job]:
    for name, workflow in WORKFLOWS.items():
        for job_id, job in workflow["jobs"].items():
            yield Job(name, job_id, job, workflow)


def job(workflow: str, job_id: str) -> Job:
    return Job(workflow, job_id, WORKFLOWS[workflow]["jobs"][job_id], WORKFLOWS[workflow])


def logical_lines(script: str) -> str:
    """Join backslash-continued shell lines."""
    return re.sub(r"\\\n\s*", " ", script)


def input_domain(name: str, workflow: dict[str, Any]) -> list[str]:
    """The values `inputs.NAME` can take: it must be a choice input (a fixed set of stages)."""
    spec = (triggers(workflow).get("workflow_dispatch") or {}).get("inputs", {}).get(name, {})
    assert spec.get("type") == "choice", f"inputs.{name} must be a choice input (a fixed set of stages)"
    return [str(option) for option in spec["options"]]


def matrix_rows(job: dict[str, Any]) -> list[dict[str, str]]:
    """The matrix's combinations: the product of its lists, then its `include` rows."""
    matrix = dict(job.get("strategy", {}).get("matrix", {}))
    include = matrix.pop("include", [])
    assert "exclude" not in matrix, "keep matrices of stacks simple: no exclude"
    keys = sorted(matrix)
    rows = [dict(zip(keys, map(str, values), strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]
    rows = [row for row in rows if row] + [{str(k): str(v) for k, v in row.items()} for row in include]
    empty: dict[str, str] = {}
    return rows or [empty]


def deploy_jobs() -> list[Job]:
    """Jobs that change a stack (`pulumi up`)."""
    return [job for job in jobs() if job.touches(STATE_CHANGING)]


def preview_jobs() -> list[Job]:
    """Jobs that only read a stack (`pulumi preview`): PR previews and drift checks."""
    return [job for job in jobs() if job.touches(STATE_READING) and not job.touches(STATE_CHANGING)]
