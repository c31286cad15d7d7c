"""Nothing the user owns is lost by accident (whole program under mocks): addresses and
keys are protected, removing an edge moves no other edge, and servers whose name or
addresses must be unique are replaced delete-first."""

from __future__ import annotations

import copy

import pytest

from components import providers
from components.config import ConfigError, stack
from components.tools import offline
from tests.support import DEV_STACK, PROD_STACK

KEY_TYPES = tuple(f"pulumi-python:dynamic/cgnat-edge:{k}" for k in ("WireGuardKey", "SshHostKey", "StackSshKey"))
ADDRESS_TYPES = (
    "hcloud:index/primaryIp:PrimaryIp",
    "digitalocean:index/reservedIp:ReservedIp",
    "oci:Core/publicIp:PublicIp",
)


@pytest.fixture
def prod(prod_run) -> offline.Run:
    return prod_run


def test_every_address_and_key_is_protected_and_nothing_else(prod):
    kept = [r for r in prod.resources if r.type in KEY_TYPES + ADDRESS_TYPES]
    # host and bootstrap keys (2 per edge), WireGuard keys (4 edges + home), the stack key, Primary IPv4+IPv6
    # of fsn, reserved IPs of fra, nyc and ams
    assert len(kept) == 2 * 4 + 4 + 1 + 1 + 2 + 3
    assert [r.name for r in kept if not r.protect] == []
    # Servers, firewalls and records stay replaceable: protecting them would block every rebuild.
    assert [r.name for r in prod.resources if r.protect and r.type not in KEY_TYPES + ADDRESS_TYPES] == []


def test_replacement_is_delete_first_where_the_provider_needs_unique_names_or_addresses(prod):
    servers = {
        r.type: r for r in prod.resources if r.type in {p.server_resource_type for p in providers.REGISTRY.values()}
    }
    # Hetzner: the server name is unique per project and a Primary IP has one assignee.
    assert servers["hcloud:index/server:Server"].delete_before_replace is True
    # DigitalOcean: names need not be unique and the reserved IP follows its assignment,
    # so the new Droplet is up before the old one goes.
    assert servers["digitalocean:index/droplet:Droplet"].delete_before_replace is False
    # Oracle: the Always Free allowance may not hold the old and the new instance at once.
    assert servers["oci:Core/instance:Instance"].delete_before_replace is True


def _edges_and_keys(run: offline.Run) -> dict[str, tuple]:
    edges = run.output("edges")
    return {name: (e["tunnelIpv4"], e["tunnelIpv6"], e["wireguardPublicKey"], e["ipv4"]) for name, e in edges.items()}


def test_removing_the_middle_edge_moves_no_other_edge(prod):
    first = prod
    edges = copy.deepcopy(stack.load(PROD_STACK).raw()["edges"])
    assert [e["name"] for e in edges] == ["fsn", "fra", "nyc", "ams"]
    second = offline.run_program(
        PROD_STACK, state=offline.key_state(first), config_overrides={"edges": [edges[0], edges[2], edges[3]]}
    )
    before, after = _edges_and_keys(first), _edges_and_keys(second)
    assert set(after) == {"fsn", "nyc", "ams"}
    for name in after:
        assert after[name] == before[name], name  # tunnel addresses, key and public address unchanged


def test_an_edge_without_index_in_a_fleet_is_refused_with_its_current_place():
    edges = copy.deepcopy(stack.load(PROD_STACK).raw()["edges"])
    del edges[1]["index"]
    with pytest.raises(ConfigError) as info:
        offline.run_program(PROD_STACK, config_overrides={"edges": edges})
    assert info.value.problems == [
        "cgnat-edge:edges[1].index: is required when the fleet has more than one edge: it fixes the edge's tunnel "
        "addresses, so removing another edge never moves them; set index: 2 (its place in the list today)"
    ]


def _provider_keys(run: offline.Run) -> dict[str, dict]:
    return {r.type: r.inputs for r in run.resources if r.type.endswith("/sshKey:SshKey")}


def test_provider_ssh_keys_are_the_stacks_own_so_stacks_and_key_edits_never_collide(dev_run, prod_run):
    dev, prod = dev_run, prod_run
    dev_keys, prod_keys = _provider_keys(dev), _provider_keys(prod)
    assert set(dev_keys) == set(prod_keys) == {"hcloud:index/sshKey:SshKey", "digitalocean:index/sshKey:SshKey"}
    for typ in dev_keys:
        # The user's keys are the same in both stacks; what the providers get is not.
        assert dev_keys[typ]["name"] == "cgnat-edge-dev" and prod_keys[typ]["name"] == "cgnat-edge-prod"
        assert dev_keys[typ]["publicKey"] != prod_keys[typ]["publicKey"]
        assert dev_keys[typ]["publicKey"] not in stack.load(PROD_STACK).raw()["sshPublicKeys"]
    # Adding and removing a user key changes no provider resource: it travels in the pushes.
    user_keys = stack.load(DEV_STACK).raw()["sshPublicKeys"]
    extra = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ other"
    again = offline.run_program(DEV_STACK, state=offline.key_state(dev), config_overrides={"sshPublicKeys": [extra]})
    assert extra not in user_keys and _provider_keys(again) == dev_keys
