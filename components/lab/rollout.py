"""A rolling push with a prober running: the new render pushed to the edges one at a
time, as the program's config steps do, while a visitor sends requests to every
service through every edge.  Failures are counted per edge, split by whether that edge
was being changed at the time."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from components.lab.edge_lab import SERVICES_SCRIPT, EdgeLab
from components.lab.netns import wait_for
from components.lab.rendered import Rendered
from components.lab.services import IDP_SESSION


def _watch_checks(el: EdgeLab, edges: list[str], rendered: Rendered, timeout: float) -> list[dict]:
    """Every service that the edges serve before and after the change, through every edge."""
    after = {s.name for s in rendered.cfg.services}
    checks = []
    for name in edges:
        ip = el.edges[name].public_ip
        for s in (s for s in el.cfg.services if s.name in after):
            base = {"edge": ip, "timeout": timeout, "lab_edge": name, "service": s.name}
            if s.mode.by_hostname:
                checks.append({**base, "kind": "tls", "sni": s.hostnames[0], "path": "/prober"})
                if s.forward_auth is not None:  # signed in: the answer comes from home, past the provider
                    checks[-1]["headers"] = {"Cookie": IDP_SESSION}
            else:
                checks.append({**base, "kind": s.protocol, "port": s.port, "payload": f"p-{name}-{s.name}"})
    return checks


def _answered(check: dict, r: dict) -> bool:
    if not r.get("ok"):
        return False
    if check["kind"] == "tls":
        return r.get("status") in (200, 401, 403)
    return r.get("echo") == check["payload"]


@dataclass
class Rollout:
    ok: bool
    windows: dict[str, tuple[float, float]]
    outputs: dict[str, str]
    failed_changed: dict[str, int]
    failed_unaffected: dict[str, int]
    requests: int
    seconds: float
    failures: list[str]
    slowest_ms: dict[str, float]
    """Per edge, the slowest answered request while that edge was being changed (a
    connection held back during a Traefik handover is answered about 1 s late)."""

    def summary(self) -> str:
        failed = [
            f"{e}: {n} while changing, {self.failed_unaffected[e]} otherwise" for e, n in self.failed_changed.items()
        ]
        text = f"pushed {', '.join(self.windows)} in {self.seconds:.1f}s; {self.requests} probes; " + "; ".join(failed)
        return text + (f" [{'; '.join(self.failures[:40])}]" if self.failures else "")

    def failure(self) -> str:
        """Which edge's push failed, and the lines of its output that say why."""
        name = next((e for e in self.windows if e not in self.outputs or "FAILED" in self.outputs[e]), "")
        bad = [
            line for out in self.outputs.values() for line in out.splitlines() if "FAILED" in line or "DIFFERS" in line
        ]
        return f"push failed on {name or '?'}: {' | '.join(bad)[:400]}"


def rollout(
    el: EdgeLab, rendered: Rendered, edges: list[str] | None = None, probe: bool = True, timeout: float = 2
) -> Rollout:
    """Push ``rendered`` to ``edges`` (default all) in order; stop at the first failure.
    ``timeout``: how long a visitor's request may take before it counts as failed (a
    connection held back during a handover waits as long as the new Traefik takes to load
    its routers: about a second on a VPS, far longer on an emulated machine)."""
    edges = edges or sorted(el.edges)
    work = el.lab.workdir
    stop = work / f"prober-stop-{time.monotonic_ns()}"
    out = work / f"prober-out-{time.monotonic_ns()}.json"
    spec = work / f"prober-{time.monotonic_ns()}.json"
    checks = _watch_checks(el, sorted(el.edges), rendered, timeout)
    prober = None
    if probe:
        spec.write_text(json.dumps(checks))
        prober = el.client.spawn(sys.executable, str(SERVICES_SCRIPT), "watch", str(spec), str(out), str(stop))
        wait_for(lambda: out.with_suffix(".started").exists(), timeout=15, message="the prober")
        time.sleep(0.5)
    windows, outputs, ok = {}, {}, True
    start = time.time()
    for name in edges:
        t0 = time.time()
        result = el.edges[name].push(rendered.bundle(name))
        windows[name] = (t0, time.time())
        outputs[name] = result.output
        if not result.ok:
            ok = False
            break
    seconds = time.time() - start
    failed_changed = dict.fromkeys(sorted(el.edges), 0)
    failed_unaffected = dict.fromkeys(sorted(el.edges), 0)
    requests = 0
    failures: list[str] = []
    slowest_ms = dict.fromkeys(sorted(el.edges), 0.0)
    if prober is not None:
        time.sleep(0.5)
        stop.write_text("")
        prober.wait(timeout=30)
        for rec in json.loads(out.read_text()):
            check = checks[rec["i"]]
            requests += 1
            edge = check["lab_edge"]
            t0, t1 = windows.get(edge, (0, 0))
            changing = t0 <= rec["t"] <= t1 + 0.5
            if _answered(check, rec["r"]):
                if changing:
                    slowest_ms[edge] = max(slowest_ms[edge], rec["r"].get("ms") or 0.0)
                continue
            (failed_changed if changing else failed_unaffected)[edge] += 1
            failures.append(
                f"{edge}/{check['service']} at +{rec['t'] - start:.2f}s"
                f"{' (changing)' if changing else ''}: {rec['r'].get('error') or rec['r'].get('status')}"
            )
    return Rollout(ok, windows, outputs, failed_changed, failed_unaffected, requests, seconds, failures, slowest_ms)
