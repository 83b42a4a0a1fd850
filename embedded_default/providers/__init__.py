"""Stand-in provider plugins for the `local` stack: test doubles of pulumi-command and pulumi-docker.

The real plugins cannot be built or downloaded here (their Go modules are refused by the module proxy), so the
`local` stack runs the real Pulumi engine with these instead. Each is a *test double*: for everything the program
uses it behaves as the real provider does (read from their sources: pulumi-command v1.2.1 with pulumi-go-provider
v1.3.0, pulumi-docker 5.2.0 with terraform-provider-docker v4.5.0), says in the engine's log that it is a stand-in,
and refuses with a clear error whatever it does not implement.

They refuse any stack but `local`: staging and production run Pulumi's real plugins, never these.

- `command`: `command:remote:Command` over real SSH (asyncssh).
- `docker`: the provider's `registryAuth` and the `getRegistryImage` invoke, over real HTTP.
- `standin`: what both share (the gRPC server the engine talks to, the engine's log, the local-stack guard).
- `plugins`: installs them into a Pulumi home as `pulumi-resource-<name>` at the SDKs' versions.
"""
