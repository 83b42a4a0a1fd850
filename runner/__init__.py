"""The operator's tool: the program under the real Pulumi engine, for any stack, from a terminal.

`python -m runner --stack STACK COMMAND` runs `components.program.program` as an inline program of Pulumi's
Automation API: the engine is the Pulumi CLI (`scripts/install-engine`), the workspace is the project's own
`Pulumi.yaml` and stack file, and the engine's output is printed as it goes. It needs no Python language host: the
Automation API serves the program from this process. `__main__.py` is the other way in, for `pulumi up` on a CI
runner; both run the same function.

- `workspace`: which CLI, folder, environment and plugins a stack is run with, and an update's first reads, begun
  before the Pulumi SDK is imported;
- `engine`: the Automation API as the runner uses it (the stack with the program inline, an update's outputs);
- `stack_file`: pinning and recording versions in a stack file, comments kept;
- `server`: what the server says of its release (live version, release lock), over SSH;
- `commands`: preview, up, release, rollback, status, history, unlock;
- `__main__`: the command line.
"""
