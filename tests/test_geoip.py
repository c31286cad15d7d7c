"""dnsGeoipDatabase under Pulumi's mocks: the database reaches each edge by a copy step
keyed by its SHA-256 (not by user data or the bundle), before that edge's push; the
MMDB checks on their own."""

from __future__ import annotations

import hashlib
import json

import pytest

from components.config import ConfigError, geoip
from components.tools import offline, render
from tests import mmdb
from tests.support import DEV_STACK


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "city.mmdb"
    path.write_bytes(mmdb.write({"192.0.2.0/24": mmdb.city(50.47, 12.37)}))
    return path


def test_copy_step_per_edge_keyed_by_the_hash_before_the_push(database):
    run = offline.run_program(DEV_STACK, config_overrides={"dnsGeoipDatabase": str(database)})
    digest = hashlib.sha256(database.read_bytes()).hexdigest()
    by_urn = {r.urn: r for r in run.resources}
    copies = run.by_type("command:remote:CopyToRemote")
    edges = run.output("edges")
    assert sorted(c.name for c in copies) == sorted(f"{name}-geoip-copy" for name in edges)
    for name in edges:
        copy = run.one("command:remote:CopyToRemote", f"{name}-geoip-copy")
        assert by_urn[copy.parent].type == "cgnat-edge:index:EdgeNode" and by_urn[copy.parent].name == name
        assert offline.reveal(copy.inputs)["triggers"] == [digest]
        install = run.one("command:remote:Command", f"{name}-geoip")
        assert copy.urn in install.dependencies
        assert "/var/lib/cgnat-edge/geoip.mmdb" in offline.reveal(install.inputs)["create"]
        assert install.urn in run.one("command:remote:Command", f"{name}-config").dependencies
    # The file itself is in no input but the copy's asset (state keeps the hash).
    others = [offline.masked(r.inputs) for r in run.resources if r.type != "command:remote:CopyToRemote"]
    assert "MaxMind.com" not in json.dumps(others, default=str)


def test_no_database_no_copy_step(dev_run):
    assert dev_run.by_type("command:remote:CopyToRemote") == []


def test_country_database_is_refused(tmp_path):
    path = tmp_path / "country.mmdb"
    path.write_bytes(mmdb.write({"192.0.2.0/24": {"country": {"iso_code": "DE"}}}, database_type="GeoLite2-Country"))
    with pytest.raises(ConfigError, match=r"cgnat-edge:dnsGeoipDatabase: .* GeoLite2-Country database, which has no"):
        offline.run_program(DEV_STACK, config_overrides={"dnsGeoipDatabase": str(path)})


def test_database_type_is_read_from_the_metadata(database):
    assert geoip.database_type(database.read_bytes()) == "Test-City"
    assert geoip.database_type(b"not an mmdb" * 100) is None


def test_render_writes_the_database_as_the_path_of_its_asset(database, tmp_path):
    run = offline.run_program(DEV_STACK, config_overrides={"dnsGeoipDatabase": str(database)})
    render.write(run, tmp_path / "render")
    resources = json.loads((tmp_path / "render" / "resources.json").read_text())
    sources = [r["inputs"]["source"] for r in resources if r["type"] == "command:remote:CopyToRemote"]
    assert sources and all(s == {"fileAsset": str(database)} for s in sources)
