"""textvae: a sequence VAE for lines of text and classical Chinese poetry.

    import textvae
    run = textvae.load_run("runs/tang5")
    run.sample(4)
"""
from .run import load_run

__all__ = ["load_run"]
