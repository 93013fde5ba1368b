"""`python -m cortex` is the `cortex` CLI."""

from cortex.cli import main

main()
