"""The edge's verifier (cloud-init/verify.py): how long it waits for a Traefik."""

from __future__ import annotations

import importlib.util
import time
import urllib.error

from components.renderers import templates

_spec = importlib.util.spec_from_file_location("verify", templates.DIRECTORY / "verify.py")
assert _spec and _spec.loader
verify = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify)


def _api(answers_after: float, loaded: bool):
    """A Traefik whose API has no routes (404) until ``answers_after`` seconds, then
    serves routers that are (or are not) the declared ones."""
    t0 = time.monotonic()

    def routers(desired: dict) -> tuple[list[str], bool]:
        if time.monotonic() - t0 < answers_after:
            raise urllib.error.HTTPError("http://127.0.0.1:8082/api/http/routers", 404, "Not Found", {}, None)  # type: ignore[arg-type]
        return ([] if loaded else ["Traefik http routers [], want ['blog@file']"]), loaded

    return routers


def test_a_traefik_still_starting_gets_the_start_allowance(monkeypatch):
    """A slow CPU: the API answers 404 for longer than the router timeout; the wait goes
    on, because the process is still starting, and ends as soon as the routers load."""
    monkeypatch.setattr(verify, "traefik_routers", _api(answers_after=0.6, loaded=True))
    t0 = time.monotonic()
    assert verify.wait_traefik({}, timeout=0.2, start_timeout=5) == []
    assert 0.6 <= time.monotonic() - t0 < 2


def test_a_traefik_that_answers_without_the_routers_fails_after_the_router_timeout(monkeypatch):
    monkeypatch.setattr(verify, "traefik_routers", _api(answers_after=0.1, loaded=False))
    t0 = time.monotonic()
    assert verify.wait_traefik({}, timeout=0.3, start_timeout=5) == ["Traefik http routers [], want ['blog@file']"]
    assert 0.4 <= time.monotonic() - t0 < 2


def test_a_traefik_that_never_answers_fails_after_the_start_allowance(monkeypatch):
    monkeypatch.setattr(verify, "traefik_routers", _api(answers_after=60, loaded=True))
    t0 = time.monotonic()
    (problem,) = verify.wait_traefik({}, timeout=0.1, start_timeout=0.8)
    assert problem.startswith("Traefik API ") and "404" in problem
    assert 0.8 <= time.monotonic() - t0 < 2
