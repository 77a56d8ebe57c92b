"""Layer 1, core: the Volume, volume and DICOM I/O, constants, options, model kinds, progress, resources, devices.

Imports nothing above it and no torch at import time (the Slicer panel imports it as it loads)."""
