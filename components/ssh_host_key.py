"""Each edge's SSH host key, made by the program so ``pulumi up`` can pin it.

Pulumi pushes WireGuard keys to the edges over SSH.  Trusting whatever host key
answers on first contact would let anyone on the path between the operator and the
edge read them; knowing the key in advance (cloud-init installs it) closes that, and
the key survives a server rebuild like the WireGuard key does."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .wireguard_key import KeyPair, WireGuardKeyProvider


def generate_host_key() -> tuple[str, str]:
    """(OpenSSH private key, ``ssh-ed25519 AAAA…`` public key)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private.decode(), public.decode()


class SshHostKeyProvider(WireGuardKeyProvider):
    """Same lifecycle as the WireGuard keys (made once, replaced only on rotation)."""

    def generate(self) -> tuple[str, str]:
        return generate_host_key()


class SshHostKey(KeyPair, module="cgnat-edge", name="SshHostKey"):
    """One ed25519 host key pair (OpenSSH formats)."""

    provider_class = SshHostKeyProvider
