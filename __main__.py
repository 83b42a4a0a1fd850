"""kametrix-deploy: everything one release of Kametrix touches, for the stage this stack is."""

import pulumi

from components import config
from components.github_environment import GitHubEnvironment, GitHubEnvironmentArgs

stack = config.load_from_engine()
plain = stack.plain

if stack.github is not None:
    GitHubEnvironment(
        "github",
        GitHubEnvironmentArgs(
            settings=stack.github,
            token=stack.secrets.github_token,
            app_private_key=stack.secrets.github_app_private_key,
            secrets=stack.secrets.environment,
            variables={"APP_URL": plain.app.url, "PULUMI_STACK": stack.stage},
        ),
    )

pulumi.export("stage", stack.stage)
pulumi.export("version", plain.version)
pulumi.export("appUrl", plain.app.url)
