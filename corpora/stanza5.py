"""Prepare the 'stanza5' corpus: see textvae/corpora.py for its source and how it is split."""
import sys

from textvae.corpora import main

if __name__ == "__main__":
    sys.exit(main(["stanza5", *sys.argv[1:]]))
