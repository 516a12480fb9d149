"""Use a trained run: `python generate.py` writes poems; `--help` lists the other commands."""
import sys

from textvae.cli import generate_main

if __name__ == "__main__":
    sys.exit(generate_main())
