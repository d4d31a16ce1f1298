"""`python -m lowrank_tool` runs the `lowrank` command line."""

from .cli import main

main()
