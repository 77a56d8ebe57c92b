"""The reading of a blinded study in the MRML scene: the logic of the "QHQGAN Reader" Slicer module (no Qt).

:class:`ReadingLogic` puts the current item of a :class:`QHQGANLib.tasks.reading_session.ReadingSession`
into the scene (new volume nodes named only by the item's neutral label, in the study's window), shows
it in the given slice views (one view, or two side by side for a pair), records the answers and takes
the item's nodes out of the scene again: an answered item is never shown again, and its answers are
locked in the reader's CSV. It works on any ``vtkMRMLScene`` (Slicer's, or slicer-core's in tests).

Console usage (Slicer's Python console)::

    >>> from QHQGANLib.apps.reading import ReadingLogic, slice_views
    >>> logic = ReadingLogic(slicer.mrmlScene, "/data/study1", "reader-01")
    >>> item = logic.show(slice_views(["Red"]))          # "Case 03 / image B" in the Red view
    >>> logic.answer({"acceptability": 4, "noise": 3, "sharpness": 4, "artefacts": "no"})
    >>> logic.pause(); logic.close()                     # resume later with the same reader ID
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.io import read_volume
from ..tasks.reading_session import Item, ReadingSession
from .scene import node_from_volume

#: The side of each image of a pair, in the order of the item's images.
PAIR_SIDES = ("left", "right")
View = Tuple[Any, Any]  # (vtkMRMLSliceNode or None, vtkMRMLSliceCompositeNode)


class ReadingLogic:
    """One reader's session in a scene (see the module docstring).

    Args:
        scene: the vtkMRMLScene. study: the study folder. reader_id: the reader's ID.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, scene, study, reader_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.scene = scene
        self.session = ReadingSession(study, reader_id, clock=clock)
        self.manifest = self.session.manifest
        self.item: Optional[Item] = None
        self.nodes: List[Any] = []

    @property
    def mode(self) -> str:
        """``"single"`` or ``"pairs"``."""
        return self.manifest["mode"]

    @property
    def questions(self) -> List[Dict[str, Any]]:
        return self.session.questions

    @property
    def window_level(self) -> Tuple[float, float]:
        """The study's display window as Slicer's (window, level)."""
        window = self.manifest["window"]
        return float(window["width"]), float(window["center"])

    @property
    def views_needed(self) -> int:
        return 2 if self.mode == "pairs" else 1

    def progress(self) -> Tuple[int, int]:
        """(answered items, all items)."""
        return self.session.progress()

    def show(self, views: Sequence[View]) -> Optional[Item]:
        """Load the current item and show it: image i in view i; None when every item is answered."""
        if len(views) < self.views_needed:
            raise ValueError(f"a {self.mode} study shows {self.views_needed} image(s) at once; got {len(views)} view(s)")
        self.clear()
        item = self.session.current()
        self.item = item
        if item is None:
            return None
        for n, path in enumerate(item.images):
            name = item.label if len(item.images) == 1 else f"{item.case} / {PAIR_SIDES[n]}"
            volume = read_volume(path, force=True)  # the study's own images: checked when it was made
            self.nodes.append(node_from_volume(volume, self.scene, name, window=self.window_level))
        for (slice_node, composite), node in zip(views, self.nodes):
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(len(self.nodes) > 1)
            if slice_node is not None and slice_node.GetOrientation() != "Axial":
                slice_node.SetOrientation("Axial")
        return item

    def answer(self, answers: Mapping[str, Any]) -> Dict[str, str]:
        """Record the answers to the shown item (then locked) and take its images out of the scene."""
        if self.item is None:
            raise ValueError("no item is shown: call show() first")
        row = self.session.answer(self.item.id, answers)
        self.clear()
        self.item = None
        return row

    def pause(self) -> float:
        """Stop the clock of the shown item and hide it; show() resumes it. Returns the seconds recorded."""
        spent = self.session.pause()
        self.clear()
        self.item = None
        return spent

    def close(self) -> None:
        """Pause, take the images out of the scene and release the reader's answer file."""
        try:
            self.clear()
        finally:
            self.session.close()

    def clear(self) -> None:
        """Remove the nodes this logic added (and their display nodes) from the scene."""
        for node in self.nodes:
            if self.scene.IsNodePresent(node):
                for i in range(node.GetNumberOfDisplayNodes()):
                    display = node.GetNthDisplayNode(i)
                    if display is not None and self.scene.IsNodePresent(display):
                        self.scene.RemoveNode(display)
                self.scene.RemoveNode(node)
        self.nodes = []


def slice_views(names: Sequence[str] = ("Red", "Yellow")) -> List[View]:
    """(slice node, slice composite node) of Slicer's named slice views (inside the Slicer application)."""
    import slicer

    manager = slicer.app.layoutManager()
    views = []
    for name in names:
        widget = manager.sliceWidget(name)
        views.append((widget.mrmlSliceNode(), widget.mrmlSliceCompositeNode()))
    return views
