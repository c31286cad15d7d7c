"""The stack configuration, parsed and validated.

One key table (``keys``), one parser that reads and reports (``parser``), one module
per section of the stack, and ``fleet.parse`` that runs them in order and returns the
typed ``components.model.fleet.FleetConfig``."""
