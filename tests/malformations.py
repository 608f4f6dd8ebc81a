"""Every way the fuzz tests damage one DICOM file: for each header field ingest reads, each way it can be
wrong (missing, wrong multiplicity, wrong type, NaN/inf, zero/negative, sizes that disagree), and files that
are no DICOM at all; each with the reason (a regex) its error row must give."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_description
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import MPEG2MPML, RLELossless

Edit = Callable[[pydicom.Dataset], None]


@dataclass(frozen=True)
class Malformation:
    """One damage: a header `edit` of a dataset, or `replace` writing something else at the file's path."""

    name: str
    reason: str  # regex searched in the recorded reason
    edit: Edit | None = None
    replace: Callable[[Path], None] | None = None

    def damage(self, path: Path) -> None:
        """Damage the DICOM file at `path` in place."""
        if self.replace:
            self.replace(path)
            return
        ds = pydicom.dcmread(path)
        self.edit(ds)
        ds.save_as(path)


def label(keyword: str) -> str:
    """The tag as the reasons name it, regex-escaped: (0028,0030) 'Pixel Spacing'."""
    tag = Tag(keyword)
    return re.escape(f"({tag.group:04X},{tag.element:04X}) '{dictionary_description(tag)}'")


def raw(keyword: str, vr: str, value: bytes | str) -> Edit:
    """Store `value` as the element's bytes, unchecked by pydicom (the way a broken writer would)."""
    data = value.encode() if isinstance(value, str) else value
    data += b" " * (len(data) % 2)

    def edit(ds: pydicom.Dataset) -> None:
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)
    return edit


def delete(keyword: str) -> Edit:
    return lambda ds: delattr(ds, keyword)


def setting(keyword: str, value: object) -> Edit:
    return lambda ds: setattr(ds, keyword, value)


def invalid(keyword: str, what: str = "") -> str:
    """The reason regex of an invalid field: invalid (0028,0030) 'Pixel Spacing': WHAT."""
    return f"invalid {label(keyword)}" + (f": {what}" if what else "")


def decimals(keyword: str, *values: str) -> Edit:
    """The field as these decimal strings, unchecked."""
    return raw(keyword, "DS", "\\".join(values))


def numbers(keyword: str, count: int) -> list[Malformation]:
    """The ways a field of `count` decimal strings can be wrong."""
    ones = ["1"] * (count - 1)
    cases = {
        "missing": (delete(keyword), f"missing {label(keyword)}"),
        "empty": (decimals(keyword, ""), f"missing {label(keyword)}"),
        "one value too few": (decimals(keyword, *ones), invalid(keyword, f"{count - 1} value")),
        "one value too many": (decimals(keyword, *ones, "1", "1"), invalid(keyword, f"{count + 1} values")),
        "not a number": (raw(keyword, "LO", "\\".join(["abc"] * count)),
                         invalid(keyword, ".* is not numeric")),
        "NaN": (decimals(keyword, "nan", *ones), invalid(keyword, ".* is not finite")),
        "infinite": (decimals(keyword, *ones, "-inf"), invalid(keyword, ".* is not finite")),
    }
    return [Malformation(f"{keyword}: {name}", reason, edit) for name, (edit, reason) in cases.items()]


def integer(keyword: str, *wrong: tuple[str, Edit, str]) -> list[Malformation]:
    """An integer field missing, of two values, as text, and each of `wrong` (name, edit, reason)."""
    cases = [
        Malformation(f"{keyword}: missing", f"missing {label(keyword)}", delete(keyword)),
        Malformation(f"{keyword}: two values", invalid(keyword, ".* is not one integer"),
                     raw(keyword, "US", b"\x01\x00\x01\x00")),
        Malformation(f"{keyword}: text", invalid(keyword, "'abc' is not one integer"),
                     raw(keyword, "LO", "abc")),
    ]
    return cases + [Malformation(f"{keyword}: {name}", reason, edit) for name, edit, reason in wrong]


def shift(keyword: str, delta: int) -> Edit:
    return lambda ds: setattr(ds, keyword, getattr(ds, keyword) + delta)


def eight_bits(ds: pydicom.Dataset) -> None:
    """BitsAllocated (and BitsStored, HighBit) 8 over 16-bit pixel data: the sizes disagree."""
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7


def pixel_data(edit: Callable[[bytes], bytes]) -> Edit:
    def apply(ds: pydicom.Dataset) -> None:
        ds.PixelData = edit(ds.PixelData)
    return apply


def transfer_syntax(uid: str | None) -> Edit:
    def apply(ds: pydicom.Dataset) -> None:
        if uid is None:
            del ds.file_meta.TransferSyntaxUID
        else:
            ds.file_meta.TransferSyntaxUID = uid
    return apply


def declared_syntax(uid: str) -> Callable[[Path], None]:
    """Native pixel data under the file meta's claim of another transfer syntax (pydicom's own writer
    refuses to write that, so the file is written element by element)."""
    def apply(path: Path) -> None:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = uid
        with open(path, "wb") as handle:
            fp = DicomFileLike(handle)
            fp.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(fp, ds.file_meta)
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_dataset(fp, ds)
    return apply


def add_frames(count: object) -> Edit:
    return raw("NumberOfFrames", "IS", str(count))


def write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def truncate_header(path: Path) -> None:
    """Keep the preamble, the DICM prefix and part of the file meta."""
    path.write_bytes(path.read_bytes()[:200])


def folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.unlink(missing_ok=True)
    path.mkdir()
    (path / "inside.txt").write_text("a folder named like a slice")


def dangling_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("moved-away.dcm"))


SIZE = "pixel data does not match the header"
IOP = "ImageOrientationPatient"
PI = "PhotometricInterpretation"

MALFORMATIONS: list[Malformation] = [
    *numbers("PixelSpacing", 2),
    Malformation("PixelSpacing: zero", invalid("PixelSpacing", ".* is not positive"),
                 decimals("PixelSpacing", "0", "0.5")),
    Malformation("PixelSpacing: negative", invalid("PixelSpacing", ".* is not positive"),
                 decimals("PixelSpacing", "0.5", "-0.5")),
    *numbers(IOP, 6),
    Malformation(f"{IOP}: zero vector", invalid(IOP, "row cosines have length 0,"),
                 decimals(IOP, "0", "0", "0", "0", "0", "-1")),
    Malformation(f"{IOP}: not unit", invalid(IOP, "column cosines have length 1.1,"),
                 decimals(IOP, "0", "1", "0", "0", "0", "-1.1")),
    Malformation(f"{IOP}: not orthogonal", invalid(IOP, "row and column cosines are not orthogonal"),
                 decimals(IOP, "0", "1", "0", "0", "0.1736", "-0.9848")),  # 80°
    *numbers("ImagePositionPatient", 3),
    *integer("Rows", ("zero", setting("Rows", 0), invalid("Rows", "0 is not one of")),
             ("7 fewer than the pixel data holds", shift("Rows", -7), SIZE)),
    *integer("Columns", ("zero", setting("Columns", 0), invalid("Columns", "0 is not one of")),
             ("7 more than the pixel data holds", shift("Columns", 7), SIZE)),
    *integer("SamplesPerPixel", ("3 for MONOCHROME2", setting("SamplesPerPixel", 3),
                                 invalid("SamplesPerPixel", "3 does not fit PhotometricInterpretation"))),
    *integer("BitsAllocated",
             ("12", setting("BitsAllocated", 12), invalid("BitsAllocated", "12 is not one of")),
             ("8 for 16-bit pixel data", eight_bits, SIZE)),
    *integer("BitsStored", ("0", setting("BitsStored", 0), invalid("BitsStored", "0 is not one of")),
             ("more than BitsAllocated", setting("BitsStored", 17),
              invalid("BitsStored", "17 is not one of 1..16"))),
    *integer("PixelRepresentation", ("2", setting("PixelRepresentation", 2),
                                     invalid("PixelRepresentation", "2 is not one of 0, 1"))),
    Malformation(f"{PI}: missing", f"missing {label(PI)}", delete(PI)),
    Malformation(f"{PI}: unknown", invalid(PI, "'FOO' is not one of"), setting(PI, "FOO")),
    Malformation(f"{PI}: palette colour", invalid(PI, "'PALETTE COLOR' is not one of"),
                 setting(PI, "PALETTE COLOR")),
    Malformation(f"{PI}: RGB for one sample", invalid("SamplesPerPixel", "1 does not fit"),
                 setting(PI, "RGB")),
    Malformation(f"{PI}: two values", invalid(PI, ".* is not one of"),
                 raw(PI, "CS", "MONOCHROME2\\MONOCHROME1")),
    Malformation("NumberOfFrames: 2", r"multi-frame image \(2 frames\)", add_frames(2)),
    Malformation("NumberOfFrames: 0", invalid("NumberOfFrames", "0 is not one of"), add_frames(0)),
    Malformation("NumberOfFrames: text", invalid("NumberOfFrames", "'abc' is not one integer"),
                 add_frames("abc")),
    Malformation("InstanceNumber: text", invalid("InstanceNumber"), raw("InstanceNumber", "IS", "abc")),
    Malformation("InstanceNumber: fraction", invalid("InstanceNumber"), raw("InstanceNumber", "IS", "1.5")),
    Malformation("InstanceNumber: two values", invalid("InstanceNumber"),
                 raw("InstanceNumber", "IS", "1\\2")),
    Malformation("RescaleSlope: zero", invalid("RescaleSlope", "0 would make"),
                 decimals("RescaleSlope", "0")),
    Malformation("RescaleSlope: NaN", invalid("RescaleSlope", "'nan' is not finite"),
                 decimals("RescaleSlope", "nan")),
    Malformation("RescaleSlope: infinite", invalid("RescaleSlope", "'inf' is not finite"),
                 decimals("RescaleSlope", "inf")),
    Malformation("RescaleSlope: text", invalid("RescaleSlope"), raw("RescaleSlope", "LO", "abc")),
    Malformation("RescaleSlope: overflows float32", "pixel values overflow float32",
                 decimals("RescaleSlope", "1e38")),
    Malformation("RescaleIntercept: NaN", invalid("RescaleIntercept", "'nan' is not finite"),
                 decimals("RescaleIntercept", "nan")),
    Malformation("RescaleIntercept: two values", invalid("RescaleIntercept", "2 values"),
                 decimals("RescaleIntercept", "0", "1")),
    Malformation("TransferSyntaxUID: missing", r"missing \(0002,0010\) 'Transfer Syntax UID'",
                 transfer_syntax(None)),
    Malformation("TransferSyntaxUID: unknown", r"unsupported transfer syntax: unknown \(1\.2\.3\.4\)",
                 transfer_syntax("1.2.3.4")),
    Malformation("TransferSyntaxUID: MPEG2", r"unsupported transfer syntax: MPEG2 Main Profile / Main Level",
                 replace=declared_syntax(MPEG2MPML)),
    Malformation("TransferSyntaxUID: RLE for native pixels", "pixel data cannot be decoded",
                 replace=declared_syntax(RLELossless)),
    Malformation("PixelData: missing", "no pixel data", delete("PixelData")),
    Malformation("PixelData: two bytes short", SIZE, pixel_data(lambda data: data[:-2])),
    Malformation("PixelData: two bytes of data beyond one frame", f"{SIZE}.* are not zero padding",
                 pixel_data(lambda data: data + b"\1\0")),
    Malformation("file: zero bytes", r"empty file \(0 bytes\)", replace=write_bytes(b"")),
    Malformation("file: text named .dcm", "not a DICOM file", replace=write_bytes(b"not an image\n" * 40)),
    Malformation("file: header cut short", "not a readable DICOM file|no pixel data",
                 replace=truncate_header),
    Malformation("file: a folder named .dcm", "a folder, not a DICOM file", replace=folder),
    Malformation("file: a link to nothing", r"a symbolic link to nothing \(.*moved-away\.dcm\)",
                 replace=dangling_link),
]
