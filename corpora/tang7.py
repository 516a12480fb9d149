"""Prepare the 'tang7' corpus: see textvae/corpora.py for its source and how it is split."""
import sys

from textvae.corpora import main

if __name__ == "__main__":
    sys.exit(main(["tang7", *sys.argv[1:]]))
