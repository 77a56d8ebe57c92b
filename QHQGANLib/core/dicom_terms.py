"""DICOM defined terms and value rules the exporter (:mod:`QHQGANLib.core.dicom_export`) may copy from a source.

Only values on these lists are copied: a site may type free text into ``BodyPartExamined``
("J SMITH LIVER"), which must never reach an export.
"""
from __future__ import annotations

#: ``PatientPosition`` defined terms (DICOM PS3.3 C.7.3.1.1.2).
PATIENT_POSITIONS = frozenset(("HFS", "HFP", "FFS", "FFP", "HFDR", "HFDL", "FFDR", "FFDL", "LFP", "LFS", "RFP",
                               "RFS", "AFDR", "AFDL", "PFDR", "PFDL"))
#: ``BodyPartExamined`` defined terms (DICOM PS3.16 Annex L, the ones CT uses) that may be copied.
BODY_PARTS = frozenset((
    "ABDOMEN", "ABDOMENPELVIS", "ADRENAL", "ANKLE", "AORTA", "BRAIN", "BREAST", "CHEST", "CHESTABDOMEN",
    "CHESTABDPELVIS", "CLAVICLE", "COCCYX", "CSPINE", "ELBOW", "EXTREMITY", "FOOT", "HAND", "HEAD", "HEADNECK",
    "HEART", "HIP", "JAW", "KIDNEY", "KNEE", "LEG", "LIVER", "LSPINE", "LUNG", "NECK", "PANCREAS", "PELVIS",
    "SHOULDER", "SKULL", "SPINE", "SSPINE", "TSPINE", "WHOLEBODY", "WRIST", "ARM", "SPLEEN", "BLADDER",
    "COLON", "STOMACH", "PROSTATE", "IAC", "ORBIT", "SINUS", "TMJ", "FACE", "LARYNX", "THYROID",
))


def is_uid(value: object) -> bool:
    """A DICOM UID: a string of at most 64 characters, digit groups separated by dots, no leading zeros."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    return all(part.isdigit() and part.isascii() and (part == "0" or not part.startswith("0"))
               for part in value.split("."))
