"""``python -m manytask.cli`` (e.g. under torchrun for data-parallel training)."""

from manytask.cli import main

main()
