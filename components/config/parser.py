"""The parser every section of the stack configuration is read with.

It sees plain values (what ``pulumi config`` stores), collects every problem it finds
instead of stopping at the first, and words each as the key and its fix, so one
``ConfigError`` can name them all before a single resource is registered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from components.config.keys import KEYS, REQUIRED, fix_key
from components.model.fleet import IPNetwork, Target

NAME_RE = re.compile(r"[a-z]([a-z0-9-]{0,22}[a-z0-9])?")
"""Edge, service and road-warrior names, whole (``fullmatch``: ``$`` would let a final
line break through).  They become file, unit and interface names, so nothing else fits."""
NAME_RULE = "use 1-24 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen"
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_CONTROL = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories no value may hold: C0/C1 controls (line breaks, tab, escape),
format characters (bidi overrides, zero-width ones), lone surrogates, line separators."""
_CONTROL_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x1b": "escape", "\x00": "null"}
_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
PLAIN_KEYS = frozenset({"sshPublicKeys"})
"""Keys whose own check words a line break better than the general one (several keys
pasted into one item)."""
_DIGITS_RE = re.compile(r"-?[0-9]{1,20}")
"""Patterns here are used with ``fullmatch``: ``$`` would let a trailing newline through."""


def whole_number(value: Any) -> int | None:
    """``value`` as a whole number: an int, or a string of ASCII digits (a quoted YAML
    value stays a string, ``pulumi config set --path`` stores a number; both mean the
    same).  None for anything else, bools and fractions included."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS_RE.fullmatch(value.strip()):
        return int(value)
    return None


WG_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")


def decode(value: Any) -> Any:
    """A value as the CLI passes it (text; structured values as JSON), read."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                return json.loads(stripped)
            except ValueError:
                return value
    return value


class Parser:
    """One stack's raw values, and the problems and warnings found reading them.

    Sections read keys through ``get`` (declared kind and default applied) and report
    through ``fail`` and ``warn``, which prefix the key as the user writes it; the
    small value parsers below report their own problems and return None."""

    def __init__(self, raw: Mapping[str, Any]):
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._unprintable: set[str] = set()
        self.raw = {k: decode(v) if k in PLAIN_KEYS else self._printable(k, decode(v)) for k, v in raw.items()}

    def _printable(self, key: str, value: Any) -> Any:
        """``value`` with every control character reported once, at the field that holds
        it, and removed, so the field's own check judges the rest and the one mistake is
        one problem.  Every string here ends up in a file on an edge or the home router
        (a zone, a unit, a ruleset, a shell script), where a line break starts a new
        line of that file and an escape sequence reaches whoever reads it."""
        if isinstance(value, str):
            bad = next((c for c in value if unicodedata.category(c) in _CONTROL), None)
            if bad is None:
                return value
            name = unicodedata.name(bad, "") or _CONTROL_NAMES.get(bad, "control character")
            self.fail(
                key,
                f"holds a control character (U+{ord(bad):04X} {name.lower()} at position {value.index(bad) + 1}); "
                f"remove it: a value is one line of printable text",
            )
            self._unprintable.add(fix_key(key))
            return "".join(c for c in value if unicodedata.category(c) not in _CONTROL)
        if isinstance(value, list):
            return [self._printable(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            clean = {}
            for k, v in value.items():
                field = self._printable(key, k) if not _FIELD_RE.fullmatch(k) else k
                clean[field] = self._printable(f"{key}.{field}" if _FIELD_RE.fullmatch(field) else key, v)
            return clean
        return value

    def fail(self, key: str, message: str) -> None:
        problem = f"{fix_key(key)}: {message}"
        if fix_key(key) in self._unprintable:
            return  # its control character is the one problem; what is left of it is not another
        if problem not in self.problems:  # a key read twice reports its problem once
            self.problems.append(problem)

    def has_problem(self, key: str) -> bool:
        return any(p.startswith(f"{fix_key(key)}:") for p in self.problems)

    def items(self, key: str, value: Any, what: str) -> list[Any]:
        """A list inside a structured value (hostnames, ipAllowList ...); anything else
        is reported once instead of being iterated character by character."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(
                key, f"must be a list of {what}, got {type(value).__name__}; write it as [a, b] or one item per line"
            )
            return []
        return value

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{fix_key(key)}: {message}")

    def get(self, key: str) -> Any:
        kind, default, _ = KEYS[key]
        value = self.raw.get(key)
        if value is None or value == "":
            if default is REQUIRED:
                self.fail(
                    key,
                    f"is required; set it with `pulumi config set {'--path ' if kind == 'object-array' else ''}{fix_key(key)} ...` or in Pulumi.<stack>.yaml ({KEYS[key][2]})",
                )
                return None
            return default
        return self.coerce(key, kind, value, default)

    def coerce(self, key: str, kind: str, value: Any, default: Any) -> Any:
        """``value`` as ``kind``; on a problem the default (None for a required key)."""
        fallback = None if default is REQUIRED else default
        if kind == "integer":
            number = whole_number(value)
            if number is not None:
                return number
            self.fail(key, f"must be a whole number, got {value!r}; write digits only, e.g. {default}")
            return fallback
        if kind == "boolean":
            truth = self.truth(value)
            if truth is not None:
                return truth
            self.fail(key, f"must be true or false, got {value!r}; write true or false ({KEYS[key][2]})")
            return fallback
        if kind in ("array", "object-array"):
            if not isinstance(value, list):
                self.fail(
                    key, f"must be a list, got {type(value).__name__}; write it as a YAML list under {fix_key(key)}"
                )
                return fallback
            return value
        if kind in ("string", "secret"):
            if not isinstance(value, str):
                self.fail(key, f"must be a string, got {type(value).__name__}; write one value, in quotes if need be")
                return fallback
            return value.strip()
        raise AssertionError(kind)

    # -- small value parsers --------------------------------------------------

    @staticmethod
    def truth(value: Any) -> bool | None:
        """A yes/no value in any spelling YAML 1.1 gives one (``true``, ``yes``, ``on``,
        ``y``), whether it arrives as the CLI's text or parsed inside a structured value,
        so ``tunnelIpv6: no`` and ``internet: no`` both mean false; None for anything else."""
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else None
        if text in ("true", "yes", "on", "y"):
            return True
        if text in ("false", "no", "off", "n"):
            return False
        return None

    def flag(self, key: str, item: dict, name: str, default: bool, meaning: str) -> bool:
        """A yes/no field of a structured item; ``meaning`` says what true does."""
        value = item.get(name)
        if value is None:  # null is the field left out
            return default
        value = self.truth(value)
        if value is None:
            self.fail(f"{key}.{name}", f"must be true or false; {meaning}")
            return False
        return value

    def unique_name(self, key: str, item: dict, seen: set[str], what: str) -> str | None:
        if isinstance(item.get("name"), (bool, int, float)):
            self.fail(f"{key}.name", f"{item['name']!r} is not text; write the name in quotes")
            return None
        name = "" if item.get("name") is None else str(item["name"])
        if not NAME_RE.fullmatch(name):
            self.fail(f"{key}.name", f"{name!r} is not a valid {what} name; {NAME_RULE}")
            return None
        if name in seen:
            self.fail(f"{key}.name", f"{what} name {name!r} is used twice; every {what} needs its own name")
            return None
        seen.add(name)
        return name

    def network(self, key: str, text: Any) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            fix = "; write it as address/length, e.g. 192.168.1.0/24"
            with contextlib.suppress(ValueError):
                fix = f" ({exc}); did you mean {ipaddress.ip_network(str(text), strict=False)}?"
            self.fail(key, f"{text!r} is not a valid CIDR prefix{fix}")
            return None

    def port(self, key: str, value: Any) -> int | None:
        number = whole_number(value)
        if number is None or not 1 <= number <= 65535:
            self.fail(key, f"{value!r} is not a port; use a number from 1 to 65535")
            return None
        return number

    def target(self, key: str, value: Any) -> Target | None:
        if value is None or value == "":
            self.fail(key, "is required; give the address:port at home it forwards to, like 192.168.1.10:443")
            return None
        text = str(value)
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
        if not match:
            self.fail(
                key, f"{value!r} is not an address:port at home; write it like 192.168.1.10:443 or [fd00::10]:443"
            )
            return None
        host_text, port_text = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        try:
            host = ipaddress.ip_address(host_text)
        except ValueError:
            self.fail(key, f"{host_text!r} is not an IP address; targets are addresses reachable through the tunnel")
            return None
        port = self.port(key, port_text)
        return Target(host, port) if port else None

    def hostname(self, key: str, value: Any, domain: str | None) -> str | None:
        """A fully qualified name, lowercased (DNS ignores case) and without its final dot."""
        if not isinstance(value, str) or not value.strip():
            got = "empty" if value is None or isinstance(value, str) else f"a {type(value).__name__}"
            self.fail(key, f"is {got}, not a hostname; write one fully qualified name like app.example.org")
            return None
        name = value.strip().rstrip(".").lower()
        labels = name.split(".")
        if (
            len(name) > 253
            or len(labels) < 2
            or not all(_LABEL_RE.fullmatch(label) for label in labels)
            or labels[-1].isdigit()
        ):
            self.fail(key, f"{value!r} is not a hostname; {_hostname_fix(name)}")
            return None
        if domain and not (name == domain or name.endswith("." + domain)):
            self.fail(
                key, f"{name} is outside the domain {domain}; use a name under {domain} or change {fix_key('domain')}"
            )
            return None
        return name


def _hostname_fix(name: str) -> str:
    """How to write ``name`` as a hostname: its punycode form when it is an
    internationalised name, else what a hostname is made of."""
    if not name.isascii():
        with contextlib.suppress(UnicodeError):
            ascii_name = name.encode("idna").decode("ascii")
            return f"DNS carries internationalised names in punycode: write {ascii_name}"
    if len(name) > 253:
        return f"it has {len(name)} characters and DNS carries at most 253; use a shorter name"
    return "use a fully qualified name like app.example.org (letters, digits, hyphens)"
