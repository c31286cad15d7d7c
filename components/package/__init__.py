"""The fleet as a Pulumi component package: other Pulumi languages (YAML, TypeScript,
Go, C#) build the same ``EdgeFleet`` through the component provider host, from typed
inputs whose names and docs are the stack's keys (``components/config/keys.py``)."""
