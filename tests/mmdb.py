"""A minimal MaxMind DB (format 2.0) writer for tests: IPv4 prefixes -> a City-style
record with ``location.latitude/longitude``, which is what PowerDNS's ``latlon()`` reads."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

NODE_EMPTY = -1
UINT16, UINT32, UINT64 = 5, 6, 9


def _control(kind: int, size: int) -> bytes:
    extended = kind > 7
    head = (0 if extended else kind << 5) | (size if size < 29 else 29)
    out = bytes([head]) + (bytes([kind - 7]) if extended else b"")
    return out + (bytes([size - 29]) if size >= 29 else b"")


def encode(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, tuple):  # (type, int): the metadata's uint16/uint32/uint64 fields
        kind, number = value
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        return _control(kind, len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(type(value))


def write(records: dict[str, dict[str, Any]], database_type: str = "Test-City") -> bytes:
    """``records``: IPv4 prefix -> data.  An IPv4-only tree, 24-bit records."""
    nodes: list[list[Any]] = [[NODE_EMPTY, NODE_EMPTY]]
    data = b""
    for prefix, record in records.items():
        net = ipaddress.IPv4Network(prefix)
        bits = int(net.network_address)
        offset = len(data)
        data += encode(record)
        node = 0
        for depth in range(net.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                nodes[node][bit] = ("data", offset)
            else:
                if not isinstance(nodes[node][bit], int) or nodes[node][bit] == NODE_EMPTY:
                    nodes.append([NODE_EMPTY, NODE_EMPTY])
                    nodes[node][bit] = len(nodes) - 1
                node = nodes[node][bit]
    count = len(nodes)

    def value(record: Any) -> int:
        if isinstance(record, tuple):
            return count + 16 + record[1]
        return count if record == NODE_EMPTY else record

    tree = b"".join(value(left).to_bytes(3, "big") + value(right).to_bytes(3, "big") for left, right in nodes)
    metadata = {
        "node_count": (UINT32, count),
        "record_size": (UINT16, 24),
        "ip_version": (UINT16, 4),
        "database_type": database_type,
        "languages": ["en"],
        "binary_format_major_version": (UINT16, 2),
        "binary_format_minor_version": (UINT16, 0),
        "build_epoch": (UINT64, 1700000000),
        "description": {"en": "cgnat-edge test database"},
    }
    return tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + encode(metadata)


def city(lat: float, lon: float, country: str = "DE") -> dict[str, Any]:
    return {
        "country": {"iso_code": country},
        "location": {"accuracy_radius": (UINT16, 20), "latitude": lat, "longitude": lon},
    }
