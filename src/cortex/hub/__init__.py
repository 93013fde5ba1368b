"""The hub: gRPC control plane (tasks, nodes, enrollment) over a Store."""
