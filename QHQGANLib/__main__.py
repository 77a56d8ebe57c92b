"""``python -m QHQGANLib ...`` runs the ``qhqgan`` command line (what the Slicer module's child process runs)."""
import sys

from QHQGANLib.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
