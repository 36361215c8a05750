"""`python -m lmstream ...` (what `torchrun -m lmstream train ...` runs)."""

from lmstream.cli import entry

if __name__ == "__main__":
    entry()
