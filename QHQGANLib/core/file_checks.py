"""Checks a volume file must pass before any of its voxels is read: regular file, honest size, safe data file.

SimpleITK reads what it can: a truncated NIfTI becomes a volume whose missing voxels are 0,
a 772-byte header declaring 30000 x 30000 voxels allocates 7 GB before failing, and a
detached NRRD / MetaImage header may name any file on the machine (``/etc/passwd``) as its
data. These checks parse the header first (NIfTI-1/2, NRRD, MetaImage) and refuse:

- anything that is not a regular file (a FIFO would block the reader for ever, a device never ends);
- data shorter than the header declares (truncated or lying files), for raw and gzip/zlib data;
- zero, NaN or infinite voxel spacing;
- 4-D images (a time series, several values per voxel) and malformed headers (no or inconsistent
  dimension and sizes, an unknown pixel type or encoding, no byte order), named, not left to ITK;
- a read that needs more memory than the machine has (:mod:`QHQGANLib.core.memory`);
- a detached data file outside the header's folder, unless ``allow_external_data=True``.

Console usage::

    >>> from QHQGANLib.core.file_checks import check_volume_file, data_files
    >>> check_volume_file("ct.nii.gz")        # raises VolumeReadError with the reason, or returns None
    >>> data_files("ct.nhdr")                 # [Path('ct.nhdr'), Path('ct.raw.gz')]: the files a volume is made of
"""
from __future__ import annotations

import bz2
import gzip
import math
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

from .memory import memory_shortfall

#: Bytes per voxel of the NRRD type names (normalised: lower case, no spaces, no ``_t``).
NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signedchar", "int8", "uchar", "unsignedchar", "uint8"), 1),
    **dict.fromkeys(("short", "shortint", "signedshort", "signedshortint", "int16", "ushort",
                     "unsignedshort", "unsignedshortint", "uint16"), 2),
    **dict.fromkeys(("int", "signedint", "int32", "uint", "unsignedint", "uint32", "float"), 4),
    **dict.fromkeys(("longlong", "longlongint", "signedlonglong", "signedlonglongint", "int64",
                     "ulonglong", "unsignedlonglong", "unsignedlonglongint", "uint64", "double"), 8),
}
#: Bytes per channel of MetaImage element types.
MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                  "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                  "MET_DOUBLE": 8}
_CHUNK = 1 << 20


class VolumeReadError(ValueError):
    """The input cannot be read as one consistent CT volume; the message says why."""


def check_voxel_count(n_voxels: int, size, source: Path, max_voxels: int, stored_bytes: int = 0) -> None:
    """Refuse an empty volume, one above ``max_voxels``, or one whose read needs more memory than is
    available (``stored_bytes`` per voxel as read, plus the float32 copy): before its voxels are allocated."""
    if n_voxels == 0:
        raise VolumeReadError(f"{source}: the volume is empty (size {tuple(size)})")
    if n_voxels > max_voxels:
        raise VolumeReadError(
            f"{source}: {n_voxels:,} voxels (size {tuple(size)}) exceed the limit of {max_voxels:,} "
            f"({n_voxels * 4 / 2**30:.1f} GiB as float32); crop it, or raise max_voxels")
    check_memory(n_voxels, stored_bytes, size, source)


def check_memory(n_voxels: int, stored_bytes: int, size, source) -> None:
    """Refuse a read needing more memory than is available (:mod:`QHQGANLib.core.memory`), before allocating."""
    problem = memory_shortfall(n_voxels, stored_bytes, size, source)
    if problem:
        raise VolumeReadError(problem)


def printable(text) -> str:
    """``text`` (a message, a path) for one terminal line: control characters (newlines, escape sequences
    a crafted file name may hold) shown escaped, never acted on by the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages can run to pages)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def require_regular_file(path: Path, role: str = "input") -> None:
    """Refuse FIFOs, sockets and devices (reading them blocks or never ends) and missing files."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VolumeReadError(f"{path}: the {role} file does not exist") from None
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise VolumeReadError(f"{path}: the {role} is {kind}; give a regular file")


def check_volume_file(path: Path, *, allow_external_data: bool = False, memory: bool = True) -> None:
    """Validate a NIfTI / NRRD / MetaImage file against its own header before it is read (see module doc);
    ``memory=False`` leaves out the memory check (a file just written from a volume in memory)."""
    path = Path(path)
    require_regular_file(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, memory)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, allow_external_data, memory)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, allow_external_data, memory)


def data_files(path: Path) -> List[Path]:
    """The files a volume is made of: the file itself plus, for ``.nhdr``/``.mhd``, its detached data file(s).

    Used to keep outputs off every file of the input (writing ``b.nhdr`` also writes ``b.raw.gz``).
    A folder (a DICOM series) gives the files in it. Unreadable headers, and anything that is not a
    regular file (a FIFO would block the parser), give just the path itself.
    """
    path = Path(path)
    files = [path]
    try:
        if path.is_dir():
            return files + [p for p in sorted(path.iterdir()) if p.is_file()]
        if not stat.S_ISREG(os.stat(path).st_mode):
            return files
        if path.name.lower().endswith((".nrrd", ".nhdr")):
            files += _nrrd_header(path)[2]
        elif path.name.lower().endswith((".mha", ".mhd")):
            files += _metaimage_header(path)[2]
    except (OSError, VolumeReadError, ValueError):
        pass
    return files


# ---------------------------------------------------------------------------
# NIfTI-1 / NIfTI-2
# ---------------------------------------------------------------------------
def _check_nifti(path: Path, memory: bool = True) -> None:
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError(f"{path}: not a readable NIfTI file ({exc})") from None
    dims, bitpix, pixdim, offset = _nifti_fields(head, path)
    extra = dims[3:]  # dim[4]: time points, dim[5..7]: values per voxel (a vector image)
    _refuse_not_3d(path, len(dims), extra[:1], math.prod(extra[1:]) * (3 if bitpix == 24 else 1),
                   "the header's dim[5..7]" if math.prod(extra[1:]) > 1 else "RGB colour", dims[:3])
    n_voxels = math.prod(dims)
    expected = offset + n_voxels * bitpix // 8
    spacing = pixdim[: min(len(dims), 3)]
    if any(not math.isfinite(s) or s == 0 for s in spacing):
        raise VolumeReadError(f"{path}: the header's voxel spacing (pixdim) is {tuple(spacing)}: zero, NaN or "
                              "infinite spacing gives no geometry; fix the file's header")
    _check_data(path, [(path, lambda: _decompressed_size(path, expected) if gz else path.stat().st_size,
                        expected)], gz, dims, max(bitpix // 8, 1), memory)


def _nifti_fields(head: bytes, path: Path) -> Tuple[List[int], int, List[float], int]:
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            pixdim = list(struct.unpack(endian + "8f", head[76:108]))
            offset = max(int(struct.unpack(endian + "f", head[108:112])[0]), 348)
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = list(struct.unpack(endian + "8d", head[104:168]))
            offset = max(int(struct.unpack(endian + "q", head[168:176])[0]), 540)
            break
    else:
        raise VolumeReadError(f"{path}: not a NIfTI file (the header is missing or cut short)")
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]) or bitpix not in (8, 16, 32, 64, 128, 24):
        raise VolumeReadError(f"{path}: the NIfTI header is invalid (dim {tuple(dim)}, {bitpix} bits per voxel)")
    return list(dim[1:ndim + 1]), bitpix, pixdim[1:ndim + 1], offset


# ---------------------------------------------------------------------------
# NRRD
# ---------------------------------------------------------------------------
def _nrrd_header(path: Path) -> Tuple[Dict[str, str], int, List[Path]]:
    """Fields, header length in bytes, and the detached data files (empty when attached)."""
    fields: Dict[str, str] = {}
    data: List[Path] = []
    with open(path, "rb") as fh:
        first = fh.readline(64)
        if not first.startswith(b"NRRD"):
            raise VolumeReadError(f"{path}: not a NRRD file (no 'NRRD000x' magic line)")
        length = len(first)
        while True:
            line = fh.readline(1 << 16)
            length += len(line)
            text = line.decode("latin-1").rstrip("\r\n")
            if not line or not text:  # end of file or the blank line before attached data
                break
            if text.startswith("#") or ":" not in text:
                continue
            key, _, value = text.partition(":=" if ":=" in text else ":")
            key = key.strip().lower().replace(" ", "")
            fields[key] = value.strip()
            if key in ("datafile", "data file") and value.strip().upper().startswith("LIST"):
                data = [path.parent / ln.decode("latin-1").strip() for ln in fh.read().splitlines() if ln.strip()]
                break
    name = fields.get("datafile")
    if name and not data:
        parts = name.split()
        if len(parts) >= 4 and "%" in parts[0]:  # "pattern min max step [subdim]"
            data = _pattern_files(path, parts)
        else:
            data = [path.parent / name]
    return fields, length, data


def _check_nrrd(path: Path, allow_external: bool, memory: bool = True) -> None:
    fields, header_length, data = _nrrd_header(path)
    dims, type_name, encoding = _nrrd_layout(path, fields)
    spacing = [float(s) for s in fields.get("spacings", "").split() if s.lower() != "nan"]
    if any(s == 0 or not math.isfinite(s) for s in spacing):
        raise VolumeReadError(f"{path}: the header's spacings {fields['spacings']!r} include zero or infinity")
    for f in data:
        _check_data_file(path, f, allow_external)
    expected = math.prod(dims) * NRRD_TYPE_BYTES[type_name]
    skip = int(fields.get("byteskip", "0") or 0)
    if encoding in ("ascii", "text", "txt", "hex"):  # text data: ITK reports short text itself
        targets = []
    elif not data:  # attached: the data follow the header
        targets = [(path, (lambda: path.stat().st_size - header_length) if encoding == "raw" else
                    (lambda: _decompressed_size(path, expected, encoding, header_length)), expected)]
    else:
        per_file = expected // len(data)
        targets = [(f, (lambda f=f: f.stat().st_size - max(skip, 0)) if encoding == "raw" else
                    (lambda f=f: _decompressed_size(f, per_file, encoding)), per_file) for f in data]
    _check_data(path, targets, encoding != "raw", dims, NRRD_TYPE_BYTES[type_name], memory)


#: NRRD encodings (the names ITK's reader knows) and the NRRD axis kinds that are image axes (the others
#: hold each voxel's values: vector, RGB-color, list, ...).
NRRD_ENCODINGS = ("raw", "gzip", "gz", "bzip2", "bz2", "ascii", "text", "txt", "hex")
NRRD_DOMAIN_KINDS = ("domain", "space", "time", "???", "none")


def _nrrd_layout(path: Path, fields: Dict[str, str]) -> Tuple[List[int], str, str]:
    """(sizes, normalised type name, encoding) of a NRRD header, or the reason it cannot be read."""
    what = f"{path}: the NRRD header"
    if "sizes" not in fields:
        raise VolumeReadError(f"{what} has no 'sizes' field: the image size is unknown")
    try:
        dims = [int(s) for s in fields["sizes"].split()]
        dimension = int(fields["dimension"])
    except KeyError:
        raise VolumeReadError(f"{what} has no 'dimension' field (NRRD needs it before 'sizes')") from None
    except ValueError:
        raise VolumeReadError(f"{what}'s sizes {fields['sizes']!r} or dimension {fields.get('dimension')!r} "
                              "are not whole numbers") from None
    if dimension != len(dims) or list(fields).index("dimension") > list(fields).index("sizes"):
        raise VolumeReadError(f"{what} says dimension {dimension} but lists {len(dims)} sizes ({fields['sizes']})"
                              if dimension != len(dims) else f"{what} gives 'sizes' before 'dimension'; NRRD needs "
                              "the dimension first")
    if not dims or any(d < 1 for d in dims):
        raise VolumeReadError(f"{what} declares size {dims}: every size must be at least 1")
    type_name = fields.get("type", "").lower().replace(" ", "").replace("_t", "")
    if type_name not in NRRD_TYPE_BYTES:
        raise VolumeReadError(f"{what}'s type {fields.get('type', '')!r} is not a NRRD pixel type (e.g. short, float)"
                              if fields.get("type") else f"{what} has no 'type' field: the pixel type is unknown")
    encoding = fields.get("encoding", "").lower()
    if encoding not in NRRD_ENCODINGS:
        raise VolumeReadError(f"{what}'s encoding {fields['encoding']!r} is not one NRRD defines (raw, gzip, "
                              "bzip2, ascii, hex)" if encoding else f"{what} has no 'encoding' field")
    endian = fields.get("endian", "").lower()
    if NRRD_TYPE_BYTES[type_name] > 1 and encoding not in ("ascii", "text", "txt", "hex") and endian not in (
            "little", "big"):
        raise VolumeReadError(f"{what}'s endian {fields['endian']!r} is neither little nor big" if endian else
                              f"{what} has no 'endian' field, which {fields['type']} data need (little or big)")
    kinds = fields.get("kinds", "").split()
    kinds = kinds if len(kinds) == len(dims) else ["domain"] * len(dims)
    image = [d for d, k in zip(dims, kinds) if k.lower() in NRRD_DOMAIN_KINDS]
    values = [(d, k) for d, k in zip(dims, kinds) if k.lower() not in NRRD_DOMAIN_KINDS and d > 1]
    _refuse_not_3d(path, len(dims), image[3:], math.prod(d for d, _ in values),
                   ", ".join(f"axis kind {k!r}" for _, k in values), image[:3])
    return dims, type_name, encoding


# ---------------------------------------------------------------------------
# MetaImage (.mha / .mhd)
# ---------------------------------------------------------------------------
def _metaimage_header(path: Path) -> Tuple[Dict[str, str], int, List[Path]]:
    fields: Dict[str, str] = {}
    length = 0
    with open(path, "rb") as fh:
        for _ in range(200):
            line = fh.readline(1 << 16)
            if not line:
                break
            length += len(line)
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        rest = fh.read().decode("latin-1").split() if fields.get("ElementDataFile", "").upper().startswith("LIST") else []
    if "ElementDataFile" not in fields:
        raise VolumeReadError(f"{path}: not a MetaImage file (no ElementDataFile line)")
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        data: List[Path] = []
    elif name.upper().startswith("LIST"):
        data = [path.parent / n for n in rest]
    elif "%" in name and len(name.split()) >= 4:
        data = _pattern_files(path, name.split())
    else:
        data = [path.parent / name]
    return fields, length, data


def _check_metaimage(path: Path, allow_external: bool, memory: bool = True) -> None:
    fields, header_length, data = _metaimage_header(path)
    what = f"{path}: the MetaImage header"
    try:
        dims = [int(s) for s in fields["DimSize"].split()]
        ndims = int(fields["NDims"])
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except KeyError as exc:
        raise VolumeReadError(f"{what} has no {exc.args[0]} line") from None
    except ValueError:
        raise VolumeReadError(f"{what}'s DimSize {fields['DimSize']!r}, NDims {fields['NDims']!r} or "
                              "ElementNumberOfChannels are not whole numbers") from None
    if fields.get("ElementType", "").upper() not in MET_TYPE_BYTES:
        raise VolumeReadError(f"{what}'s ElementType {fields['ElementType']!r} is not a MetaImage pixel type (e.g. "
                              "MET_SHORT, MET_FLOAT)" if fields.get("ElementType") else f"{what} has no ElementType line")
    element = MET_TYPE_BYTES[fields["ElementType"].upper()]
    if ndims != len(dims) or not dims or any(d < 1 for d in dims) or channels < 1:
        raise VolumeReadError(f"{what} says NDims {ndims} but DimSize {fields['DimSize']!r}" if ndims != len(dims)
                              else f"{what} declares size {dims} with {channels} channel(s): each must be at least 1")
    _refuse_not_3d(path, ndims, dims[3:], channels, f"ElementNumberOfChannels = {channels}", dims[:3])
    spacing = [float(s) for s in fields.get("ElementSpacing", fields.get("ElementSize", "")).split()]
    if any(s == 0 or not math.isfinite(s) for s in spacing):
        raise VolumeReadError(f"{path}: the header's ElementSpacing {tuple(spacing)} includes zero, NaN or infinity")
    for f in data:
        _check_data_file(path, f, allow_external)
    expected = math.prod(dims) * element * channels
    compressed = fields.get("CompressedData", "False").lower() == "true"
    targets = [(path, header_length, expected)] if not data else [(f, 0, expected // len(data)) for f in data]
    skip = int(fields.get("HeaderSize", "0") or 0)
    _check_data(path, [(f, (lambda f=f, offset=offset, size=size: _decompressed_size(f, size, "zlib", offset))
                        if compressed else (lambda f=f, offset=offset: f.stat().st_size - offset - (max(skip, 0) if data
                                                                                                 else 0)), size)
                       for f, offset, size in targets], compressed, dims, element * channels, memory)


# ---------------------------------------------------------------------------
# shared
# ---------------------------------------------------------------------------
def _check_data_file(header: Path, data: Path, allow_external: bool) -> None:
    folder = header.resolve().parent
    resolved = data.resolve()
    if not allow_external and folder not in resolved.parents:
        raise VolumeReadError(
            f"{header}: its data file {data} lies outside the header's folder {folder}; QHQGAN reads only data "
            "beside the header (pass allow_external_data=True if you trust this header)")
    require_regular_file(data, role="header's data file")


def _refuse_not_3d(path: Path, ndim: int, extra: List[int], values: int, values_what: str, size: List[int]) -> None:
    """Refuse an image that is not one 3-D volume of one value per voxel: more image axes of size above 1
    (``extra``: a time series) or ``values`` above 1 per voxel (a vector or colour image; ``values_what``
    says where the header puts them). Axes of size 1 beyond the third are harmless."""
    series = math.prod(extra)
    if series <= 1 and values <= 1:
        return
    parts = ([f"a series of {series} volumes of size {' x '.join(map(str, size))}"] if series > 1 else []) + (
        [f"{values} values per voxel: {values_what}"] if values > 1 else [])
    kind = f"{ndim}-D image" if ndim > 3 else "image of several values per voxel"
    raise VolumeReadError(f"{path}: {kind} ({'; '.join(parts)}): QHQGAN reads 3-D CT volumes of one value per "
                          "voxel; save one 3-D volume of it (e.g. with 3D Slicer or SimpleITK's Extract) and read that")


def _check_data(header: Path, targets, compressed: bool, dims, stored_bytes: int, memory: bool) -> None:
    """The length checks (``targets``: (file, its data length in bytes when called, the length expected))
    and the memory check: memory first for compressed data (counting a 10 GB stream takes a minute), after
    the lengths for raw data (a lying header is told as such)."""
    if memory and compressed:
        check_memory(math.prod(dims), stored_bytes, dims, header)
    for f, actual, expected in targets:
        _check_length(f, actual(), expected, dims)
    if memory and not compressed:
        check_memory(math.prod(dims), stored_bytes, dims, header)


def _check_length(path: Path, actual: int, expected: int, dims) -> None:
    if actual < expected:
        raise VolumeReadError(
            f"{path}: truncated or lying file: the header declares size {tuple(dims)}, which needs {expected:,} "
            f"bytes, but the file holds {max(actual, 0):,}; refusing to fill the missing voxels with zeros")


def _pattern_files(header: Path, parts: List[str]) -> List[Path]:
    """The data files of a ``"<printf pattern> min max step"`` data-file line (NRRD and MetaImage; max included)."""
    lo, hi, step = (int(p) for p in parts[1:4])
    step = step or 1
    return [header.parent / (parts[0] % i) for i in range(lo, hi + (1 if step > 0 else -1), step)]


def _decompressed_size(path: Path, expected: int, encoding: str = "gzip", offset: int = 0) -> int:
    """Bytes the compressed stream decodes to (reading it to the end: a broken stream is refused)."""
    encoding = encoding.lower()
    if encoding in ("bzip2", "bz2"):
        decoder = bz2.BZ2Decompressor()
    elif encoding == "zlib":
        decoder = zlib.decompressobj()
    elif encoding in ("gzip", "gz"):
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
    else:
        raise VolumeReadError(f"{path}: unknown data encoding {encoding!r}")
    total = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            for block in iter(lambda: fh.read(_CHUNK), b""):
                total += len(decoder.decompress(block))
                if getattr(decoder, "eof", False):
                    break
    except (OSError, zlib.error, EOFError) as exc:
        raise VolumeReadError(f"{path}: the compressed voxel data are corrupt ({exc})") from None
    if not getattr(decoder, "eof", True):
        raise VolumeReadError(f"{path}: the compressed voxel data end early (truncated file: {total:,} of "
                              f"{expected:,} bytes)")
    return total
