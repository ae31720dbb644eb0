"""Issue 9 items 10 and 16: hostile signature sections end in bad-eif; re-signed EIFs read.

``nitro-cli sign-eif`` on an already signed EIF (aws-nitro-enclaves-image-format
``EifSigner::write_signature``) rewrites the signature section header and shifts the offsets
of later sections, but leaves the header table's size of the signature section as it was.
nitro-cli reads sections one after another by their own headers, so it accepts such a file.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cbor2
import pytest
from eif_helpers import CMDLINE, KERNEL, RAMDISK0, RAMDISK1, signing_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation._cli import main
from attestation.eif import (
    CRC_FIELD_OFFSET,
    HEADER_SIZE,
    SECTION_HEADER_SIZE,
    EifHeader,
    SectionType,
    assemble_eif,
    build_eif,
    read_eif,
    sign_pcr0,
)
from attestation.errors import EifError
from attestation.pcr import image_pcrs

PEM, KEY = signing_pair()
SIGNED = assemble_eif(
    KERNEL, CMDLINE, [RAMDISK0, RAMDISK1], signing_certificate_pem=PEM, signing_key=KEY
)
PCR0 = image_pcrs(KERNEL, CMDLINE, [RAMDISK0, RAMDISK1])[0]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def resign_like_nitro_cli(eif: bytes, new_signature: bytes) -> bytes:
    """What upstream ``write_signature(is_signed=True)`` + ``update_crc`` do to a file."""
    header = EifHeader.parse(eif)
    slot = next(
        i
        for i, off in enumerate(header.section_offsets)
        if struct.unpack(">H", eif[off : off + 2])[0] == SectionType.SIGNATURE
    )
    start = header.section_offsets[slot]
    old_size = struct.unpack(">Q", eif[start + 4 : start + SECTION_HEADER_SIZE])[0]
    old_end = start + SECTION_HEADER_SIZE + old_size
    shift = len(new_signature) - old_size
    offsets = list(header.section_offsets)
    for i in range(slot + 1, header.num_sections):  # upstream: slots after the signature's
        offsets[i] += shift
    patched = EifHeader(
        header.version,
        header.flags,
        header.default_mem,
        header.default_cpus,
        header.num_sections,
        tuple(offsets),
        header.section_sizes,
        0,
    ).to_bytes()  # section_sizes untouched: the stale size
    section = struct.pack(">HHQ", SectionType.SIGNATURE, 0, len(new_signature)) + new_signature
    body = eif[HEADER_SIZE:start] + section + eif[old_end:]
    crc = zlib.crc32(body, zlib.crc32(patched[:CRC_FIELD_OFFSET]))
    return patched[:CRC_FIELD_OFFSET] + struct.pack(">I", crc) + body


def test_an_eif_re_signed_by_nitro_cli_reads_with_the_same_pcrs() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    before = read_eif(SIGNED)
    for curve in (ec.SECP256R1(), ec.SECP521R1()):  # shorter and longer signature sections
        pem, key = signing_pair(curve)
        signature = sign_pcr0(PCR0, pem, key)
        resigned = resign_like_nitro_cli(SIGNED, signature)
        (sec,) = [s for s in before.sections if s.type is SectionType.SIGNATURE]
        assert len(signature) != sec.size  # the table's size is now stale
        image = read_eif(resigned)
        assert image.crc_ok
        assert {i: image.pcrs[i] for i in (0, 1, 2)} == {i: before.pcrs[i] for i in (0, 1, 2)}
        assert image.pcrs[8] != before.pcrs[8]
        assert image.signing is not None and image.signing.signature_check
        assert image.header.section_sizes != tuple(s.size for s in image.sections)


def test_a_stale_size_anywhere_else_is_still_refused() -> None:
    header = EifHeader.parse(SIGNED)
    for slot in range(header.num_sections - 1):  # every section but the signature
        sizes = list(header.section_sizes)
        sizes[slot] += 1
        patched = EifHeader(
            header.version, header.flags, header.default_mem, header.default_cpus,
            header.num_sections, header.section_offsets, tuple(sizes), header.crc32,
        ).to_bytes()  # fmt: skip
        with pytest.raises(EifError, match="section header says"):
            read_eif(patched + SIGNED[HEADER_SIZE:], check_crc=False)


def test_a_signature_section_header_claiming_more_than_the_file_is_refused() -> None:
    (sec,) = [s for s in read_eif(SIGNED).sections if s.type is SectionType.SIGNATURE]
    for own in (sec.size + 1, 2**63):
        data = bytearray(SIGNED)
        data[sec.offset + 4 : sec.offset + SECTION_HEADER_SIZE] = struct.pack(">Q", own)
        with pytest.raises(EifError, match="outside"):
            read_eif(bytes(data), check_crc=False)
    data = bytearray(SIGNED)
    data[sec.offset + 4 : sec.offset + SECTION_HEADER_SIZE] = struct.pack(">Q", sec.size - 1)
    with pytest.raises(EifError, match="trailing"):
        read_eif(bytes(data), check_crc=False)


# -- item 10: hostile signature sections ---------------------------------------------------------


def _eif_with_signature(section: bytes) -> bytes:
    return build_eif(
        [
            (SectionType.KERNEL, KERNEL),
            (SectionType.CMDLINE, CMDLINE),
            (SectionType.RAMDISK, RAMDISK0),
            (SectionType.SIGNATURE, section),
        ]
    )


def _cose(protected: bytes, payload: bytes, signature: object = b"\x00" * 96) -> bytes:
    return cbor2.dumps([protected, {}, payload, signature])


def _signature_section(cose: bytes, pem: bytes = PEM) -> bytes:
    return cbor2.dumps([{"signing_certificate": list(pem), "signature": list(cose)}])


def _outcome(data: bytes) -> str:
    try:
        image = read_eif(data)
    except EifError as exc:
        assert exc.code == "bad-eif" and exc.message
        return "bad-eif"
    assert image.signing is not None
    return "ok" if image.signing.signature_check else "unchecked"


PAYLOAD = cbor2.dumps({"register_index": 0, "register_value": list(PCR0)})


def test_the_reported_protected_header_is_typed() -> None:
    """Regression: COSE protected header {1: [1]} raised an untyped TypeError."""
    data = _eif_with_signature(_signature_section(_cose(cbor2.dumps({1: [1]}), PAYLOAD)))
    assert _outcome(data) == "bad-eif"
    with pytest.raises(EifError, match="algorithm"):
        read_eif(data)
    # a well-formed COSE_Sign1 whose signature is wrong is still read: SignatureCheck false
    fine = _eif_with_signature(_signature_section(_cose(cbor2.dumps({1: -35}), PAYLOAD)))
    assert _outcome(fine) == "unchecked"


def test_the_reported_header_through_the_cli(capsys, tmp_path: Path) -> None:
    path = tmp_path / "reported.eif"
    path.write_bytes(_eif_with_signature(_signature_section(_cose(cbor2.dumps({1: [1]}), PAYLOAD))))
    code = main(["pcrs", "--eif", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and json.loads(out)["error"]["code"] == "bad-eif"
    assert "Traceback" not in err


def test_the_cli_gives_bad_eif_exit_2_and_no_traceback(capsys, tmp_path: Path) -> None:
    path = tmp_path / "hostile.eif"
    path.write_bytes(_eif_with_signature(b"\xff" * 40))
    code = main(["pcrs", "--eif", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert json.loads(out)["error"]["code"] == "bad-eif"
    assert "Traceback" not in err


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.binary(max_size=16)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-3, 3) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(header=cbor_values, alg=cbor_values)
def test_any_protected_header_is_typed(header: object, alg: object) -> None:
    for value in (header, {1: alg}, {1: alg, 4: header}):
        protected = cbor2.dumps(value)
        assert _outcome(_eif_with_signature(_signature_section(_cose(protected, PAYLOAD)))) in {
            "bad-eif",
            "unchecked",
        }


@SETTINGS
@given(cose=cbor_values, payload=cbor_values, signature=cbor_values)
def test_any_cose_structure_is_typed(cose: object, payload: object, signature: object) -> None:
    candidates = [
        cbor2.dumps(cose),
        _cose(cbor2.dumps({1: -35}), cbor2.dumps(payload)),
        _cose(cbor2.dumps({1: -35}), PAYLOAD, signature),
    ]
    for raw in candidates:
        assert _outcome(_eif_with_signature(_signature_section(raw))) in {"bad-eif", "unchecked"}


@SETTINGS
@given(entries=cbor_values, cert=cbor_values)
def test_any_signature_section_is_typed(entries: object, cert: object) -> None:
    sections = [
        cbor2.dumps(entries),
        cbor2.dumps([{"signing_certificate": cert, "signature": list(_cose(b"\xa0", PAYLOAD))}]),
    ]
    for raw in sections:
        assert _outcome(_eif_with_signature(raw)) in {"bad-eif", "unchecked"}
