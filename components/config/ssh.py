"""The edges' SSH: who may log in, from where, as whom, and the host key's rotation."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from components.config.keys import fix_key
from components.config.parser import Parser
from components.model.fleet import IPNetwork, SshSpec

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
MIN_RSA_BITS = 1024
"""sshd refuses shorter RSA keys (RequiredRSASize, OpenSSH 9.1 and later)."""


def parse(p: Parser) -> SshSpec:
    keys = p.get("sshPublicKeys") or []
    if p.raw.get("sshPublicKeys") is not None and not keys and not p.has_problem("sshPublicKeys"):
        p.fail("sshPublicKeys", "is empty; give at least one public key (the contents of ~/.ssh/id_ed25519.pub)")
    seen: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        problem = _ssh_key_problem(k)
        if problem:
            p.fail(f"sshPublicKeys[{i}]", problem)
            continue
        blob = base64.b64decode(k.split()[1])
        if blob in seen:
            p.fail(
                f"sshPublicKeys[{i}]",
                f"is the same key as {fix_key('sshPublicKeys')}[{seen[blob]}] (comments aside); the providers refuse "
                "to store one key twice, remove one of them",
            )
        seen.setdefault(blob, i)
    cidrs: list[IPNetwork] = []
    items = p.get("sshAllowedCidrs") or []
    for i, text in enumerate(items):
        net = p.network(f"sshAllowedCidrs[{i}]", text)
        if net in cidrs:
            p.fail(
                f"sshAllowedCidrs[{i}]",
                f"{net} is listed twice (first as {fix_key('sshAllowedCidrs')}[{cidrs.index(net)}]); every firewall "
                "rule would carry it twice; remove one",
            )
        elif net is not None:
            cidrs.append(net)
    if not items and not p.has_problem("sshAllowedCidrs"):
        p.fail(
            "sshAllowedCidrs",
            "allows nobody; pulumi needs SSH to push config, list at least the prefix you run pulumi from",
        )
    user = p.get("sshUser")
    # Also keeps it from reading as an option (-oProxyCommand=...) on the ssh command line.
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        p.fail(
            "sshUser",
            f"{user!r} is not a user name; use a login such as root or admin (at most 32 lowercase letters, "
            "digits, _ and -, starting with a letter or _)",
        )
    rotation = p.get("sshHostKeyRotation")
    if rotation < 0:
        p.fail("sshHostKeyRotation", f"{rotation} must be 0 or more; raise it by one to rotate the host keys")
    return SshSpec(tuple(k.strip() for k in keys if isinstance(k, str)), tuple(cidrs), user, max(rotation, 0))


def _ssh_string(data: bytes) -> tuple[bytes, bytes] | None:
    """The first length-prefixed string of an SSH wire blob and the rest (RFC 4251)."""
    if len(data) < 4:
        return None
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 + size:
        return None
    return data[4 : 4 + size], data[4 + size :]


def _control_character(line: str) -> str | None:
    """Why a control character inside the key's line is refused, or None.  The edge reads
    its authorized_keys file by lines, and a carriage return (a Windows line ending
    pasted into the middle of the line) or another line break splits the key in two, so
    every push would fail its check and roll back.  Around the line (a pasted CRLF) such
    characters are only its end and are stripped, as all surrounding whitespace is."""
    for position, char in enumerate(line):
        if char == "\t" or unicodedata.category(char) not in ("Cc", "Zl", "Zp"):
            continue
        comment = re.match(r"[^ \t]+[ \t]+[^ \t]+[ \t]+", line)
        where = "in its comment" if comment and position >= comment.end() else "inside the key"
        if char == "\r":
            return (
                f"has a carriage return (\\r) {where}, which splits the key's line in two on the edge; "
                "remove it (save the .pub or stack file with Unix line endings and paste the line again)"
            )
        return (
            f"has the control character U+{ord(char):04X} {where}, which the edge's authorized_keys "
            "file cannot hold; remove it and paste the line again"
        )
    return None


def _ssh_key_problem(line: Any) -> str | None:
    """Why ``line`` is not a public key the edges' sshd accepts, or None.  Messages never
    echo the key data: a pasted private key must not end up in a log."""
    paste = "paste one line such as the contents of ~/.ssh/id_ed25519.pub"
    head = "is not an OpenSSH public key"
    if not isinstance(line, str):
        return f"{head} (got {type(line).__name__} {line!r}); {paste}"
    if "PRIVATE KEY" in line:
        return f"{head}: it is a PRIVATE key, which must never leave your machine; paste the public one (~/.ssh/id_ed25519.pub) instead"
    if "\n" in line.strip():
        return f"{head}: it holds several lines; list each key as its own item, one line each"
    control = _control_character(line.strip())
    if control:
        return control
    parts = line.split(maxsplit=2)
    if len(parts) < 2:
        return f"{head} (type, base64 key data, optional comment); {paste}"
    kind, data = parts[0], parts[1]
    if kind == "ssh-dss":
        return "is a DSA key, which OpenSSH no longer accepts; make an ed25519 key with `ssh-keygen -t ed25519` and paste its .pub"
    if kind not in SSH_KEY_TYPES:
        # Named only when it cannot be key material: base64 has no hyphen, every key type has one.
        named = f"{kind!r} is not a key type" if re.fullmatch(r"[a-z0-9@.]*-[a-z0-9@.-]*", kind[:40]) else "no key type"
        return f"{head}: {named} (use {', '.join(SSH_KEY_TYPES)}); {paste}"
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"{head}: the key data after {kind} is not base64; {paste}, unchanged"
    first = _ssh_string(blob)
    if first is None or not first[0]:
        return f"{head}: the {kind} key data is cut short ({len(blob)} bytes); {paste}, the whole line"
    if first[0] != kind.encode():
        inner = first[0].decode("ascii", "replace")[:40]
        return f"{head}: the line says {kind} but the key data is a {inner!r} key; {paste}, unchanged"
    try:
        key = serialization.load_ssh_public_key(f"{kind} {data}".encode())
    except (ValueError, UnsupportedAlgorithm):
        return f"{head}: the {kind} key data is damaged; {paste}, unchanged"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return (
            f"is an RSA key of {key.key_size} bits and sshd refuses RSA keys under {MIN_RSA_BITS}; "
            "make an ed25519 key with `ssh-keygen -t ed25519` and paste its .pub"
        )
    return None
