"""The item shapes of the structured keys (``edges``, ``services``, ``roadWarriors``).

The key table has one line per key; a list of mappings needs a field-by-field shape so
that ``pulumi package add`` generates a typed SDK for it.  The fields are those the
parser accepts (a test holds the two together); the parser still checks the values,
so a shape says only which fields exist and of which kind.  Ports are strings because
a forward service takes a range (``27015-27030``)."""

from typing import TypedDict


class RateLimit(TypedDict, total=False):
    average: int
    """Requests per second per client, on average."""
    burst: int
    """Requests per second per client at most in a burst; default the average."""


class Middlewares(TypedDict, total=False):
    rate_limit: RateLimit
    """Per-client request rate limit."""
    ip_allow_list: list[str]
    """Only these source prefixes reach the service."""
    ip_deny_list: list[str]
    """These source prefixes are refused."""
    basic_auth: list[str]
    """htpasswd lines (user:hash, bcrypt, apr1 or sha-crypt); make one with `htpasswd -nB user`."""
    security_headers: bool
    """Send HSTS and related security headers."""


class ForwardAuth(TypedDict, total=False):
    address: str
    """http(s)://<IP>[:port]/path of the sign-in service at home; no user or password in it."""
    auth_response_headers: list[str]
    """Headers of the sign-in service's answer passed on to the service, e.g. Remote-User."""


class Edge(TypedDict, total=False):
    name: str
    """Edge name: resource names, hostnames of the edge, tunnel interface."""
    provider: str
    """The provider the edge is rented from (docs/edges.md)."""
    location: str
    """The provider's location code, e.g. fsn1, ams3, eu-amsterdam-1."""
    server_type: str
    """The provider's server type; default the cheapest that fits."""
    image: str
    """Operating system image; default the provider's Debian."""
    index: int
    """Fixes the edge's tunnel addresses (one /30 each); required with more than one edge."""
    # The fields one provider takes besides these (its platform's edge_fields).
    compartment: str
    """The compartment OCID the edge is created in (the provider with compartments only)."""
    availability_domain: int
    """1-3 in regions with three; default the first that offers A1 (the provider with availability domains only)."""
    always_free: bool
    """Default true: refuse anything beyond the provider's free allowance (the provider with one only)."""


class Service(TypedDict, total=False):
    name: str
    """Service name, unique in the fleet."""
    mode: str
    """passthrough (TLS ends at home), http (TLS ends on the edge), tcp, udp or forward (kernel DNAT)."""
    hostnames: list[str]
    """passthrough, http: the names routed by SNI or Host on ports 443 and 80."""
    port: str
    """tcp, udp, forward: the public port; forward also a range such as 27015-27030."""
    protocol: str
    """forward: tcp or udp."""
    target: str
    """address:port at home, inside homeLanPrefixes."""
    http_target: str
    """passthrough: address:port that ACME HTTP-01 challenges for these names go to."""
    health_path: str
    """passthrough, http: path the edges' health checks request."""
    proxy_protocol: bool
    """passthrough, tcp: send the visitor's address with PROXY protocol v2."""
    middlewares: Middlewares
    """http: Traefik middlewares in front of the service."""
    allow_countries: list[str]
    """Only visitors from these ISO 3166 countries reach this service; overrides the fleet default."""
    deny_countries: list[str]
    """Visitors from these ISO 3166 countries are dropped; overrides the fleet default."""
    forward_auth: ForwardAuth
    """http: a sign-in service at home every request must pass first."""


class RoadWarrior(TypedDict, total=False):
    name: str
    """Device name, unique among the road warriors."""
    public_key: str
    """The device's WireGuard public key; empty = generate its key pair as a Pulumi secret."""
    allowed_prefixes: list[str]
    """Home prefixes the device may reach; default every homeLanPrefixes prefix."""
    internet: bool
    """Also route the device's internet traffic through the edge."""
    index: int
    """Fixes the device's address in roadWarriorPool."""


ITEMS: dict[str, type] = {"edges": Edge, "services": Service, "roadWarriors": RoadWarrior}
"""The item shape of each structured key."""
