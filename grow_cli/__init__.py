"""grow: grow a pretrained transformer checkpoint into a larger one, train it further, and publish it.

Everything the `grow` command does is a plain Python call too; the CLI in `grow_cli.cli` is a thin layer over
these library functions.
"""

__version__ = "0.1.0"
