"""The embedded default: what the `local` stack releases to and with, on this machine only.

- `target/`: a real deploy target on loopback (dockerd, a registry, sshd), started as root;
- `standin_app/`: a stand-in of the Kametrix app (its health contract and migrate entry) and the PostgreSQL and
  proxy images, built without downloading any image;
- `providers/`: stand-ins of the command and docker providers, written on Pulumi's provider SDK, for machines where
  the real plugins cannot be had. Test doubles of the real providers: the `local` stack only.

Nothing here is used by `staging` or `production`: they release to real servers with the real providers.
"""
