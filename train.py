"""Train a text VAE: `python train.py` (tang5 defaults), `python train.py --help` for flags."""
import sys

from textvae.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
