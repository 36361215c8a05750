"""`python -m lmstream ...` (what `torchrun -m lmstream train ...` runs)."""

from lmstream.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
