"""WireGuard key pairs that live only in Pulumi state, as secrets.

A key is its own resource and depends on nothing else, so replacing a VPS (new image,
new server type, a provider outage) never changes a key and the home side keeps
working with the configs it already has.  Keys are made once and then left alone:
``diff`` ignores everything except ``rotation``.

Rotating a key is an explicit act.  Keys are protected, so first
``pulumi state unprotect <urn of the key>``, then one of:

* bump the ``rotation`` input of that key (the program passes it through), then
  ``pulumi up``; the change is visible in code review, or
* ``pulumi up --replace <urn of the key>`` (``pulumi stack --show-urns`` lists them).

Either way the new public key reaches the edges on the same ``pulumi up``; the home
side needs its configs written again (``cgnat-edge home-config``).

Pulumi pickles the provider into the state by reference: the provider process imports
this module from the project's virtualenv (the project is installed there), so a fix
here also applies to keys made by an older version, and never re-creates them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pulumi
import pulumi.dynamic

from components.model.keys import generate_host_key, generate_keypair


class WireGuardKeyProvider(pulumi.dynamic.ResourceProvider):
    """Creates X25519 key pairs; never regenerates one unless asked to."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        rotation = news.get("rotation", 0)
        failures = []
        if (
            isinstance(rotation, bool)
            or not isinstance(rotation, (int, float))
            or int(rotation) != rotation
            or rotation < 0
        ):
            failures.append(pulumi.dynamic.CheckFailure("rotation", f"must be a whole number from 0, got {rotation!r}"))
        return pulumi.dynamic.CheckResult(news, failures)

    def generate(self) -> tuple[str, str]:
        return generate_keypair()

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        private, public = self.generate()
        # The id is public state: derive it from the public key, never from the private one.
        key_id = hashlib.sha256(public.encode()).hexdigest()[:16]
        return pulumi.dynamic.CreateResult(
            key_id, {"rotation": int(props.get("rotation", 0)), "public_key": public, "private_key": private}
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        # Only ``rotation`` matters; in particular a changed pickled provider (new code)
        # must not look like a change, or an upgrade of this program would rotate keys.
        if int(olds.get("rotation", 0)) != int(news.get("rotation", 0)):
            return pulumi.dynamic.DiffResult(changes=True, replaces=["rotation"], delete_before_replace=False)
        return pulumi.dynamic.DiffResult(changes=False, replaces=[], stables=["public_key", "private_key"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        # Reached only if the engine asks for an in-place update anyway: keep the key.
        return pulumi.dynamic.UpdateResult(
            {
                "rotation": int(news.get("rotation", 0)),
                "public_key": olds["public_key"],
                "private_key": olds["private_key"],
            }
        )

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        return pulumi.dynamic.ReadResult(id_, props)


class KeyPair(pulumi.dynamic.Resource):
    """A key pair made once by ``provider_class``; ``private_key`` is a secret output.

    Subclasses fix the type token with ``module=``/``name=``; that token must never
    change, or every key of that kind would be replaced (rotated) on the next run."""

    provider_class: type[WireGuardKeyProvider]

    public_key: pulumi.Output[str]
    private_key: pulumi.Output[str]
    rotation: pulumi.Output[int]

    def __init__(self, name: str, rotation: pulumi.Input[int] = 0, opts: pulumi.ResourceOptions | None = None):
        # Protected: a key lives only in state, so deleting it by accident (dropping an
        # edge, `pulumi destroy`) would lose what the home router trusts.
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["private_key"], protect=True)
        super().__init__(
            self.provider_class(),
            name,
            {"rotation": rotation, "public_key": None, "private_key": None},
            pulumi.ResourceOptions.merge(opts, secret_opts) if opts else secret_opts,
        )


class WireGuardKey(KeyPair, module="cgnat-edge", name="WireGuardKey"):
    """One X25519 key pair (base64, as ``wg`` prints them)."""

    provider_class = WireGuardKeyProvider


class SshHostKeyProvider(WireGuardKeyProvider):
    """Made once like the WireGuard keys, but rotated in place: the new key keeps the
    one it replaces as ``previous_public_key``, for the record: the step that installs
    the new key pins the edge's install key (components/resources/edge_node.py)."""

    def generate(self) -> tuple[str, str]:
        return generate_host_key()

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        created = super().create(props)
        return pulumi.dynamic.CreateResult(created.id, {**(created.outs or {}), "previous_public_key": ""})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        if int(olds.get("rotation", 0)) != int(news.get("rotation", 0)):
            return pulumi.dynamic.DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return pulumi.dynamic.DiffResult(changes=False, replaces=[], stables=["public_key", "private_key"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        if int(olds.get("rotation", 0)) == int(news.get("rotation", 0)):
            return super().update(_id, olds, news)
        private, public = self.generate()
        return pulumi.dynamic.UpdateResult(
            {
                "rotation": int(news.get("rotation", 0)),
                "public_key": public,
                "private_key": private,
                "previous_public_key": olds["public_key"],
            }
        )


class SshHostKey(KeyPair, module="cgnat-edge", name="SshHostKey"):
    """One ed25519 host key pair (OpenSSH formats) that SSH steps pin, so not even the
    first push of WireGuard keys can be intercepted: an edge's bootstrap key (in its
    user data, retired at first boot) and its pinned host key (pushed, rotated)."""

    provider_class = SshHostKeyProvider
    previous_public_key: pulumi.Output[str]

    def __init__(self, name: str, rotation: pulumi.Input[int] = 0, opts: pulumi.ResourceOptions | None = None):
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["private_key"], protect=True)
        pulumi.dynamic.Resource.__init__(
            self,
            self.provider_class(),
            name,
            {"rotation": rotation, "public_key": None, "private_key": None, "previous_public_key": None},
            pulumi.ResourceOptions.merge(opts, secret_opts) if opts else secret_opts,
        )


class OpenSshKeyProvider(WireGuardKeyProvider):
    """An ed25519 pair in OpenSSH formats with the WireGuard keys' lifecycle."""

    def generate(self) -> tuple[str, str]:
        return generate_host_key()


class StackSshKey(KeyPair, module="cgnat-edge", name="StackSshKey"):
    """The one SSH key a stack registers at its providers.

    Servers need some key at creation or the providers mail a root password; the user's
    keys reach the edges through cloud-init and every push instead (so removing one
    revokes it).  A key of its own per stack has a name and a fingerprint no other
    stack uses, so two stacks of one project never collide, and editing
    ``sshPublicKeys`` never touches a provider resource.  Its private half is never used."""

    provider_class = OpenSshKeyProvider
