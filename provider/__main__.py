"""The component package's entry: serves EdgeFleet's schema and builds it on request."""

from pulumi.provider.experimental import component_provider_host

from components.package.fleet import EdgeFleet
from components.tools.package_schema import PACKAGE

if __name__ == "__main__":
    component_provider_host([EdgeFleet], PACKAGE)
