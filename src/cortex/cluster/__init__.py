"""Running several hubs as one cluster: the HAProxy config and ``cortex cluster up``."""
