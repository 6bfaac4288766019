"""`python -m grow_cli …` (and `accelerate launch -m grow_cli …`) runs the same CLI as the `grow` script."""

from grow_cli.cli import script

if __name__ == "__main__":
    script()
