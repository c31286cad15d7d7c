"""The edge contract is written down once: the edge's programs take every path and unit
from the files generated from ``components/model/edge_contract.py``, those files say
what the module says, and every push carries them beside the programs that read them."""

from __future__ import annotations

import json
import subprocess

import pytest

from components.model import edge_contract
from components.renderers import bootstrap, bundle, contract, templates

PROGRAMS = {
    "push.sh": (bundle.member(edge_contract.CONTRACT_SH), edge_contract.PUSH_DIR, edge_contract.PUSH_RECOVER_UNIT),
    "verify.py": (edge_contract.CONTRACT_JSON,),
    "cgnat-edge-status.py": (),
}
"""The edge's programs that read the contract, and the places each may name by hand:
where the contract itself is (in the bundle for the push, on the edge for the verifier),
and for the push what it needs before the bundle is unpacked; status gets its paths as
its argument."""


def _named_by_hand() -> list[str]:
    """The contract's paths, units and addresses: values no word in a comment matches by chance."""
    values = [v for value in edge_contract.values().values() for v in (value if isinstance(value, tuple) else (value,))]
    return [v for v in values if "/" in v or "." in v]


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_edge_programs_name_no_contract_path_by_hand(program):
    text = templates.text(program)
    for own in PROGRAMS[program]:
        assert own in text, f"{program} no longer names {own} where the contract says"
        text = text.replace(own, "")
    named = sorted(v for v in _named_by_hand() if v in text)
    assert not named, f"{program} names {named} by hand; take them from the contract"


def test_the_shell_contract_says_what_the_module_says(tmp_path):
    path = tmp_path / "contract.sh"
    path.write_text(contract.shell())
    script = 'source "$1"; for name in "${@:2}"; do declare -p "$name"; done'
    names = list(edge_contract.values())
    done = subprocess.run(["bash", "-c", script, "_", str(path), *names], capture_output=True, text=True, check=True)
    sourced: dict[str, str | tuple[str, ...]] = {}
    for line in done.stdout.splitlines():
        # declare -- name="value"  /  declare -a name=([0]="a" [1]="b")
        name, value = line.split(" ", 2)[2].split("=", 1)
        if line.startswith("declare -a"):
            sourced[name] = tuple(part.split("=", 1)[1].strip('"') for part in value.strip("()").split())
        else:
            sourced[name] = value.strip('"')
    assert sourced == edge_contract.values()


def test_the_json_contract_says_what_the_module_says():
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in edge_contract.values().items()}
    assert json.loads(contract.json_text()) == want


def test_every_push_carries_the_contract_and_the_first_boot_does_not_need_it(fleet_config):
    edge = fleet_config.edges[0]
    files = {f.path: f.content for f in bootstrap.node_files(fleet_config, edge, "[Interface]\n")}
    assert files[edge_contract.CONTRACT_SH] == contract.shell()
    assert files[edge_contract.CONTRACT_JSON] == contract.json_text()
    # Only the push and the verifier read it, and both arrive with the first push.
    assert {edge_contract.CONTRACT_SH, edge_contract.CONTRACT_JSON} <= set(bootstrap.NOT_IN_USER_DATA)
    assert edge_contract.VERIFY in bootstrap.NOT_IN_USER_DATA


def test_the_bundle_decodes_to_the_files_it_was_made_of(fleet_config):
    files = bootstrap.node_files(fleet_config, fleet_config.edges[0], "[Interface]\n")
    assert bundle.decode(bundle.encode(files)) == files
    assert bundle.manifest(files).splitlines()[0] == f"{files[0].mode}\t{files[0].owner}\t{files[0].path}"
