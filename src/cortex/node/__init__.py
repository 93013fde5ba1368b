"""The node agent: dials the hub, runs tasks under a supervisor, journals what it did."""
