"""`python -m resolver` runs the `sinkhole` command."""

from resolver.cli import main

main()
