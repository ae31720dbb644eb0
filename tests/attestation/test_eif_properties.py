"""Hostile EIFs: truncations, mutations and garbage only ever raise EifError, quickly."""

from __future__ import annotations

import struct
import time

from eif_helpers import CMDLINE, KERNEL, RAMDISK0, RAMDISK1, signing_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.eif import EifImage, SectionType, assemble_eif, build_eif, read_eif
from attestation.errors import EifError
from attestation.pcr import image_pcrs

PEM, KEY = signing_pair()
SIGNED = assemble_eif(
    KERNEL, CMDLINE, [RAMDISK0, RAMDISK1], signing_certificate_pem=PEM, signing_key=KEY
)
PLAIN = assemble_eif(KERNEL, CMDLINE, [RAMDISK0, RAMDISK1])
MAX_SECONDS = 2.0  # every read of these small inputs must finish well within this

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_safely(data: bytes, *, check_crc: bool = True) -> EifImage | None:
    start = time.monotonic()
    try:
        image = read_eif(data, check_crc=check_crc)
    except EifError as exc:
        assert exc.code == "bad-eif" and exc.message
        image = None
    assert time.monotonic() - start < MAX_SECONDS
    return image


@SETTINGS
@given(base=st.sampled_from([PLAIN, SIGNED]), cut=st.integers(min_value=0))
def test_truncation_raises_eif_error(base: bytes, cut: int) -> None:
    cut %= len(base)
    assert read_safely(base[:cut]) is None


@SETTINGS
@given(
    base=st.sampled_from([PLAIN, SIGNED]),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8
    ),
    check_crc=st.booleans(),
)
def test_mutations_never_escape(base: bytes, edits: list[tuple[int, int]], check_crc: bool) -> None:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    image = read_safely(bytes(data), check_crc=check_crc)
    if image is not None and check_crc:
        assert image.crc_ok


@SETTINGS
@given(
    base=st.sampled_from([PLAIN, SIGNED]),
    field=st.sampled_from(["num", "offset", "size"]),
    slot=st.integers(0, 31),
    value=st.integers(0, 2**64 - 1),
)
def test_header_table_mutations(base: bytes, field: str, slot: int, value: int) -> None:
    data = bytearray(base)
    if field == "num":
        struct.pack_into(">H", data, 26, value & 0xFFFF)
    else:
        struct.pack_into(">Q", data, (28 if field == "offset" else 284) + 8 * slot, value)
    read_safely(bytes(data), check_crc=False)


@SETTINGS
@given(st.binary(max_size=4096))
def test_garbage(data: bytes) -> None:
    assert read_safely(data) is None or data.startswith(b".eif")


@SETTINGS
@given(st.binary(max_size=2048))
def test_garbage_behind_a_valid_magic(tail: bytes) -> None:
    read_safely(b".eif" + tail)


@SETTINGS
@given(
    kinds=st.lists(st.integers(0, 8), min_size=1, max_size=8),
    payloads=st.lists(st.binary(max_size=64), min_size=8, max_size=8),
)
def test_arbitrary_section_lists(kinds: list[int], payloads: list[bytes]) -> None:
    read_safely(build_eif(list(zip(kinds, payloads, strict=False))))


@SETTINGS
@given(
    kernel=st.binary(max_size=256),
    cmdline=st.binary(max_size=64),
    ramdisks=st.lists(st.binary(max_size=256), min_size=1, max_size=5),
)
def test_well_formed_images_measure_like_the_formulas(
    kernel: bytes, cmdline: bytes, ramdisks: list[bytes]
) -> None:
    image = read_eif(assemble_eif(kernel, cmdline, ramdisks))
    assert dict(image.pcrs) == image_pcrs(kernel, cmdline, ramdisks)
    assert [s.type for s in image.sections][:3] == [
        SectionType.KERNEL,
        SectionType.CMDLINE,
        SectionType.METADATA,
    ]


def test_every_flipped_bit_of_the_signature_section_raises_only_eif_error() -> None:
    """Regression: a mutated signing certificate whose key cryptography rejects lazily."""
    (section,) = [s for s in read_eif(SIGNED).sections if s.type is SectionType.SIGNATURE]
    start = section.offset
    for offset in range(start, len(SIGNED)):
        for bit in (0x01, 0x20):
            data = bytearray(SIGNED)
            data[offset] ^= bit
            read_safely(bytes(data), check_crc=False)
