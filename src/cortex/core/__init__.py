"""Cores without I/O: values in, values or decisions out. No sockets, files or clocks."""
