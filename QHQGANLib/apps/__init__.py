"""Layer 6, apps: the qhqgan command line, the background runner, the Slicer scene bridge, the demo.

The top: nothing in QHQGANLib imports from here."""
