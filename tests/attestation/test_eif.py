"""EIF reader and writer: spec vectors, layout rules, CRC, PCR8, streaming."""

from __future__ import annotations

import hashlib
import io
import json
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from eif_helpers import (
    CMDLINE,
    EMPTY_PCR,
    HEADER_PREFIX,
    KERNEL,
    PCR0,
    PCR1,
    PCR2,
    RAMDISK0,
    RAMDISK1,
    signing_pair,
)

from attestation.eif import (
    HASH_ALGORITHM,
    HEADER_SIZE,
    SECTION_HEADER_SIZE,
    EifLimits,
    SectionType,
    assemble_eif,
    build_eif,
    compare_pcrs,
    load_measurements,
    read_eif,
)
from attestation.errors import EifError
from attestation.pcr import image_pcrs, measure, pcr8_from_certificate

K, C, R, S, M = (
    SectionType.KERNEL,
    SectionType.CMDLINE,
    SectionType.RAMDISK,
    SectionType.SIGNATURE,
    SectionType.METADATA,
)
META = json.dumps({"ImageName": "app", "ImageVersion": "1"}, separators=(",", ":")).encode()


def standard(meta: bytes = META) -> list[tuple[SectionType, bytes]]:
    return [(K, KERNEL), (C, CMDLINE), (M, meta), (R, RAMDISK0), (R, RAMDISK1)]


# --- spec vectors --------------------------------------------------------------------------------


def test_synthetic_vector_pcrs_from_assembled_eif() -> None:
    image = read_eif(build_eif(standard()))
    assert image.pcrs[0].hex() == PCR0
    assert image.pcrs[1].hex() == PCR1
    assert image.pcrs[2].hex() == PCR2
    assert 8 not in image.pcrs
    assert image.crc_ok and not image.is_signed
    assert image.metadata == {"ImageName": "app", "ImageVersion": "1"}
    assert image.cmdline == CMDLINE.decode()


def test_918_byte_vector_and_header_prefix() -> None:
    # §5.7 gives the size (918 B) but not the metadata text: 918 - 701 = 217 bytes of JSON.
    meta = json.dumps({"ImageName": "x" * 190}, separators=(",", ":")).encode()
    meta = meta[:-2] + b"x" * (217 - len(meta)) + b'"}'
    assert len(meta) == 217
    data = build_eif(standard(meta))
    assert len(data) == 918
    assert data[:28].hex() == HEADER_PREFIX
    image = read_eif(data)
    assert [s.type for s in image.sections] == [K, C, M, R, R]
    assert image.sections[0].offset == HEADER_SIZE


def test_single_ramdisk_gives_empty_content_pcr2_and_pcr0_equals_pcr1() -> None:
    image = read_eif(build_eif([(K, KERNEL), (C, CMDLINE), (M, META), (R, RAMDISK0)]))
    assert image.pcrs[2].hex() == EMPTY_PCR == measure([]).hex()
    assert image.pcrs[0] == image.pcrs[1]


def test_reader_agrees_with_pcr_formulas() -> None:
    ramdisks = [RAMDISK0, RAMDISK1, b"third" * 1000]
    data = assemble_eif(KERNEL, CMDLINE, ramdisks)
    assert dict(read_eif(data).pcrs) == image_pcrs(KERNEL, CMDLINE, ramdisks)


def test_measurements_json_shape_matches_nitro_cli() -> None:
    out = read_eif(build_eif(standard())).measurements()
    assert list(out) == ["Measurements"]
    assert out["Measurements"] == {
        "HashAlgorithm": HASH_ALGORITHM,
        "PCR0": PCR0,
        "PCR1": PCR1,
        "PCR2": PCR2,
    }
    assert HASH_ALGORITHM == "Sha384 { ... }"


# --- invariants ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        [K, C, R, R, M],  # README diagram: metadata last
        [M, K, C, R, R],
        [K, M, C, R, R],
        [K, C, R, M, R],
    ],
)
def test_metadata_position_does_not_change_pcrs(order: list[SectionType]) -> None:
    content = {K: [KERNEL], C: [CMDLINE], M: [META], R: [RAMDISK0, RAMDISK1]}
    sections = [(t, content[t].pop(0)) for t in order]
    image = read_eif(build_eif(sections))
    assert [p.hex() for p in (image.pcrs[0], image.pcrs[1], image.pcrs[2])] == [PCR0, PCR1, PCR2]


def test_header_slot_order_differs_from_file_order() -> None:
    data = bytearray(build_eif(standard()))

    # swap the header slots of kernel (0) and metadata (2): file order is unchanged
    def slot(i: int) -> slice:
        return slice(28 + 8 * i, 36 + 8 * i)

    def size(i: int) -> slice:
        return slice(284 + 8 * i, 292 + 8 * i)

    data[slot(0)], data[slot(2)] = data[slot(2)], data[slot(0)]
    data[size(0)], data[size(2)] = data[size(2)], data[size(0)]
    image = read_eif(bytes(data), check_crc=False)  # the CRC covers the header tables too
    assert not image.crc_ok
    assert image.pcrs[0].hex() == PCR0
    assert [s.slot for s in image.sections] == [2, 1, 0, 3, 4]


def test_changed_ramdisk1_byte_changes_pcr0_and_pcr2_only() -> None:
    base = read_eif(build_eif(standard())).pcrs
    changed = read_eif(
        build_eif([(K, KERNEL), (C, CMDLINE), (M, META), (R, RAMDISK0), (R, b"RAMDISK-1-APq")])
    ).pcrs
    assert changed[0] != base[0]
    assert changed[2] != base[2]
    assert changed[1] == base[1]


def test_changed_metadata_changes_crc_not_pcrs() -> None:
    a = read_eif(build_eif(standard()))
    b = read_eif(build_eif(standard(b'{"ImageName":"other"}')))
    assert dict(a.pcrs) == dict(b.pcrs)
    assert a.header.crc32 != b.header.crc32


def test_aarch64_flag() -> None:
    image = read_eif(build_eif(standard(), arch="aarch64"))
    assert image.header.arch == "aarch64"
    assert image.header.flags == 1


# --- CRC -----------------------------------------------------------------------------------------


def test_crc_mismatch_detected() -> None:
    data = bytearray(build_eif(standard()))
    data[HEADER_SIZE + SECTION_HEADER_SIZE] ^= 0x01  # first kernel byte
    with pytest.raises(EifError, match="CRC mismatch") as info:
        read_eif(bytes(data))
    assert info.value.code == "bad-eif"
    assert info.value.expected != info.value.found
    image = read_eif(bytes(data), check_crc=False)
    assert not image.crc_ok
    assert image.describe()["CheckCRC"] is False


def test_crc_field_itself_wrong() -> None:
    data = build_eif(standard(), crc32=0x12345678)
    with pytest.raises(EifError, match="12345678"):
        read_eif(data)


def test_crc_is_zlib_crc32_over_header_and_sections() -> None:
    data = build_eif(standard())
    import zlib

    expected = zlib.crc32(data[: HEADER_SIZE - 4] + data[HEADER_SIZE:])
    assert struct.unpack(">I", data[HEADER_SIZE - 4 : HEADER_SIZE])[0] == expected


# --- signature / PCR8 ----------------------------------------------------------------------------


def test_signed_eif_pcr8_and_signature_check() -> None:
    pem, key = signing_pair()
    data = assemble_eif(
        KERNEL, CMDLINE, [RAMDISK0, RAMDISK1], signing_certificate_pem=pem, signing_key=key
    )
    image = read_eif(data)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert image.pcrs[8] == pcr8_from_certificate(der)
    assert image.pcrs[8] == measure([der])
    assert image.pcrs[0].hex() == PCR0  # the signature section is not part of PCR0
    assert image.is_signed and image.signing is not None
    assert image.signing.signature_check, image.signing.problem
    assert image.signing.certificate_der == der
    assert "PCR8" in image.measurements()["Measurements"]
    assert image.describe()["SignatureCheck"] is True


@pytest.mark.parametrize("curve", ["p256", "p521"])
def test_signature_other_curves(curve: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem, key = signing_pair(ec.SECP256R1() if curve == "p256" else ec.SECP521R1())
    data = assemble_eif(KERNEL, CMDLINE, [RAMDISK0], signing_certificate_pem=pem, signing_key=key)
    assert read_eif(data).signing.signature_check  # type: ignore[union-attr]


def test_signature_by_other_key_fails_check_but_pcr8_is_the_certificate() -> None:
    pem, _ = signing_pair()
    _, other_key = signing_pair()
    data = assemble_eif(
        KERNEL, CMDLINE, [RAMDISK0], signing_certificate_pem=pem, signing_key=other_key
    )
    image = read_eif(data)
    assert image.signing is not None and not image.signing.signature_check
    assert "does not verify" in (image.signing.problem or "")
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert image.pcrs[8] == pcr8_from_certificate(der)


def test_signature_over_other_image_fails_check() -> None:
    from attestation.eif import sign_pcr0

    pem, key = signing_pair()
    sig = sign_pcr0(b"\x00" * 48, pem, key)
    image = read_eif(build_eif([*standard(), (S, sig)]))
    assert image.signing is not None
    assert image.signing.problem == "signed PCR0 differs from the image's PCR0"


def test_signature_section_is_cbor_arrays_of_uint8() -> None:
    import cbor2

    from attestation.eif import sign_pcr0

    pem, key = signing_pair()
    entry = cbor2.loads(sign_pcr0(bytes(48), pem, key))[0]
    assert isinstance(entry["signing_certificate"], list)
    assert bytes(entry["signing_certificate"]) == pem
    cose = cbor2.loads(bytes(entry["signature"]))
    assert cbor2.loads(cose[0]) == {1: -35} and cose[1] == {} and len(cose[3]) == 96


# --- rejections ----------------------------------------------------------------------------------


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = build_eif(standard())
KERNEL_HDR = HEADER_SIZE  # the kernel's section header offset


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (GOOD[:100], "truncated"),
        (b"ELF!" + GOOD[4:], "bad magic"),
        (_patch(GOOD, 26, ">H", 1), "num_sections is 1"),
        (_patch(GOOD, 26, ">H", 33), "num_sections is 33"),
        (_patch(GOOD, 26, ">H", 4), "trailing"),
        (_patch(GOOD, KERNEL_HDR, ">H", 6), "invalid type 6"),
        (_patch(GOOD, KERNEL_HDR, ">H", 0), "invalid type 0"),
        (_patch(GOOD, KERNEL_HDR + 4, ">Q", 13), "section header says 13"),
        (_patch(GOOD, 28, ">Q", 10**12), "outside"),
        (_patch(GOOD, 284, ">Q", 2**64 - 1), "outside"),
        (_patch(GOOD, 28, ">Q", 100), "overlaps the header"),
        (_patch(GOOD, 28 + 8, ">Q", HEADER_SIZE), "duplicate"),
        (GOOD + b"\x00", "trailing"),
        (GOOD[:-1], "outside"),
        (build_eif([(K, b"k"), (C, b"c"), (K, b"k2"), (R, b"r")]), "more than one kernel"),
        (build_eif([(K, b"k"), (C, b"c"), (C, b"c2"), (R, b"r")]), "more than one cmdline"),
        (build_eif([(R, b"r"), (K, b"k"), (C, b"c")]), "before the kernel"),
        (build_eif([(K, b"k"), (C, b"c"), (M, META)]), "no ramdisk"),
        (build_eif([(C, b"c"), (M, META)]), "no kernel"),
        (build_eif([(K, b"k"), (R, b"r")]), "no cmdline"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, b"\x80" * 32769)]), "limit 32768"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, b"\xff\xff")]), "not valid CBOR"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, b"\x80")]), "non-empty array"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, b"\x81\xa0")]), "lacks"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (M, b"{nope")]), "not JSON"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (M, b"[1]")]), "not a JSON object"),
        (build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (M, b"{}"), (M, b"{}")]), "more than one"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_rejected(data: bytes, message: str) -> None:
    with pytest.raises(EifError, match=message):
        read_eif(data)


def test_gap_between_sections_rejected() -> None:
    data = bytearray(build_eif(standard()))
    # move the last section's header one byte later, inserting a filler byte
    last_slot_offset = 28 + 8 * 4
    (last,) = struct.unpack_from(">Q", data, last_slot_offset)
    data[last:last] = b"\x00"
    struct.pack_into(">Q", data, last_slot_offset, last + 1)
    with pytest.raises(EifError, match="unaccounted bytes"):
        read_eif(bytes(data))


def test_hostile_signature_lengths_do_not_allocate() -> None:
    for body in (b"\x9b" + b"\xff" * 8, b"\x5b" + b"\xff" * 8, b"\x81\xbb" + b"\xff" * 8):
        with pytest.raises(EifError):
            read_eif(build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, body)]))


def test_bad_certificate_in_signature() -> None:
    import cbor2

    body = cbor2.dumps([{"signing_certificate": list(b"not pem"), "signature": [1, 2]}])
    with pytest.raises(EifError, match="not a PEM"):
        read_eif(build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, body)]))
    body = cbor2.dumps([{"signing_certificate": [1, 999], "signature": [1]}])
    with pytest.raises(EifError, match="not a byte array"):
        read_eif(build_eif([(K, b"k"), (C, b"c"), (R, b"r"), (S, body)]))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(EifError, match="cannot open"):
        read_eif(tmp_path / "nope.eif")


# --- streaming -----------------------------------------------------------------------------------


class SpyFile(io.BytesIO):
    """Records the largest single read."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        assert n is not None and n >= 0, "the reader must never read 'everything'"
        self.largest = max(self.largest, n)
        return super().read(n)


def test_sections_are_read_in_bounded_chunks() -> None:
    big = hashlib.shake_256(b"app").digest(3 * 1024 * 1024 + 17)
    data = assemble_eif(KERNEL, CMDLINE, [RAMDISK0, big])
    spy = SpyFile(data)
    limits = EifLimits(chunk_size=64 * 1024)
    image = read_eif(spy, limits=limits)
    assert image.pcrs[2] == measure([big])
    assert spy.largest <= max(limits.chunk_size, HEADER_SIZE, limits.max_metadata_size)
    assert spy.largest <= 64 * 1024 + HEADER_SIZE


def test_chunk_size_does_not_change_result(tmp_path) -> None:
    path = tmp_path / "app.eif"
    path.write_bytes(assemble_eif(KERNEL * 100, CMDLINE, [RAMDISK0 * 50, RAMDISK1 * 70]))
    a = read_eif(path)
    b = read_eif(path, limits=EifLimits(chunk_size=7))
    assert dict(a.pcrs) == dict(b.pcrs)
    assert a.computed_crc32 == b.computed_crc32


# --- measurements files and comparisons -----------------------------------------------------------


def test_load_measurements_shapes(tmp_path) -> None:
    pcrs = read_eif(GOOD).pcrs
    nitro = read_eif(GOOD).measurements()
    flat = {f"PCR{i}": v.hex() for i, v in pcrs.items()}
    policy = {"pcrs": {str(i): v.hex() for i, v in pcrs.items()}}
    for shape in (nitro, flat, policy):
        assert load_measurements(shape) == dict(pcrs)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(nitro))
    assert load_measurements(path) == dict(pcrs)
    for bad in ({"PCR0": "zz"}, {"PCR99": "00" * 48}, {"HashAlgorithm": "x"}, [1]):
        with pytest.raises(EifError):
            load_measurements(bad)  # type: ignore[arg-type]


def test_compare_pcrs_names_the_mismatch() -> None:
    a = {0: b"\x01" * 48, 2: b"\x02" * 48}
    result = compare_pcrs(a, {0: b"\x01" * 48, 2: b"\x03" * 48})
    assert not result.matches
    assert [m.index for m in result.mismatches] == [2]
    assert "PCR2 mismatch: expected 0202" in result.mismatches[0].describe()
    assert compare_pcrs(a, {0: a[0]}).mismatches[0].found is None
    assert compare_pcrs(a, dict(a)).matches
