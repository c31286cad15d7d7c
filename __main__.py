"""cgnat-edge: VPS edges you rent yourself, wired to a home behind CGNAT."""

import pulumi

from components import config
from components.fleet import EdgeFleet

cfg = config.from_pulumi()
fleet = EdgeFleet("fleet", cfg, ssh_private_key=config.ssh_private_key())

pulumi.export("edges", fleet.edges)
pulumi.export("monthlyCost", fleet.monthly_cost)
pulumi.export("homeConfigs", fleet.home_configs)
pulumi.export("dns", fleet.dns)
