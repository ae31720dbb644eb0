"""SimulatedNsm behaves like /dev/nsm (nitro-spec §1.2-1.3, §2.6-2.7), driven through NsmClient."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from attestation.document import parse_document
from attestation.errors import DebugEnclaveError, UntrustedRootError
from attestation.pcr import ZERO_PCR, extend, pcr3_from_role_arn, pcr4_from_instance_id
from attestation.policy import Policy
from attestation.testpki import TestPKI
from attestation.verifier import verify
from enclave.nsm import NsmClient, NsmError
from enclave.nsm.codec import ERROR_CODES
from simulator.measure import measure_enclave_code
from simulator.nsm import (
    MAX_ATTESTATION_FIELD,
    SimulatedNsm,
    boot_pcrs,
    make_module_id,
    random_instance_id,
)

ENCLAVE_DIR = Path(__file__).resolve().parents[2] / "enclave"
ROLE = "arn:aws:iam::123456789012:role/Webserver"
INSTANCE = "i-1234567890abcdef0"
MODULE_ID = "i-1234567890abcdef0-enc0190a2f1964172e6"
T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
BOOT = {i: bytes([i + 1]) * 48 for i in range(16)}


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.generate(not_before=T0 - timedelta(days=1))


def make(pki, **kw) -> tuple[SimulatedNsm, NsmClient]:
    kw.setdefault("pcrs", BOOT)
    kw.setdefault("module_id", MODULE_ID)
    kw.setdefault("clock", lambda: T0)
    nsm = SimulatedNsm(pki, **kw)
    return nsm, NsmClient(transport=nsm.handle)


def code_of(call) -> str:
    with pytest.raises(NsmError) as info:
        call()
    return info.value.nsm_code


# -- boot state --------------------------------------------------------------------------------


def test_boot_state_matches_the_hardware_check(pki):
    _, client = make(pki)
    desc = client.describe_nsm()
    assert (desc.max_pcrs, desc.digest, desc.module_id) == (32, "SHA384", MODULE_ID)
    assert desc.locked_pcrs == tuple(range(16))
    assert desc.version_major == 1
    for i in range(16):
        assert client.describe_pcr(i).locked is True
        assert client.describe_pcr(i).data == BOOT[i]
    for i in range(16, 32):
        info = client.describe_pcr(i)
        assert info.locked is False and info.data == ZERO_PCR


def test_for_enclave_measures_the_code_and_names_the_module(pki):
    nsm = SimulatedNsm.for_enclave(pki, ENCLAVE_DIR, instance_id=INSTANCE, role_arn=ROLE)
    pcrs = nsm.pcrs
    measured = measure_enclave_code(ENCLAVE_DIR)
    assert [pcrs[i] for i in (0, 1, 2)] == [measured[i] for i in (0, 1, 2)]
    assert pcrs[3] == pcr3_from_role_arn(ROLE)
    assert pcrs[4] == pcr4_from_instance_id(INSTANCE)
    assert all(pcrs[i] == ZERO_PCR for i in range(5, 32))
    assert re.fullmatch(rf"{INSTANCE}-enc[0-9a-f]{{16}}", nsm.module_id)
    # no role: PCR3 zero; default instance: the TestPKI's
    other = SimulatedNsm.for_enclave(pki, ENCLAVE_DIR)
    assert other.pcrs[3] == ZERO_PCR
    assert other.pcrs[4] == pcr4_from_instance_id(pki.instance_id)


def test_ids_look_like_aws_ones():
    instance = random_instance_id()
    assert re.fullmatch(r"i-[0-9a-f]{17}", instance)
    module = make_module_id(instance, now=datetime(2026, 2, 2, tzinfo=UTC))
    assert re.fullmatch(rf"{instance}-enc019c1[0-9a-f]{{11}}", module)


def test_boot_pcrs_zero_pcr3_without_role(tmp_path):
    pcrs = boot_pcrs(ENCLAVE_DIR, instance_id=INSTANCE)
    assert sorted(pcrs) == [0, 1, 2, 3, 4] and pcrs[3] == ZERO_PCR


@pytest.mark.parametrize(
    "kw",
    [
        {"pcrs": {16: bytes(48)}},
        {"pcrs": {0: bytes(32)}},
        {"pcrs": {"0": bytes(48)}},
        {"module_id": ""},
    ],
    ids=repr,
)
def test_constructor_refuses_bad_configuration(pki, kw):
    assert code_of(lambda: make(pki, **kw)) == "InvalidArgument"


# -- PCR operations ---------------------------------------------------------------------------


def test_extend_is_sha384_of_old_and_data(pki):
    _, client = make(pki)
    expected = ZERO_PCR
    for chunk in (b"", b"a", bytes(1000)):
        expected = extend(expected, chunk)
        assert client.extend_pcr(20, chunk) == expected
    assert client.describe_pcr(20).data == expected


def test_locked_and_out_of_range_pcrs(pki):
    _, client = make(pki)
    for i in (0, 4, 15):
        assert code_of(lambda i=i: client.extend_pcr(i, b"x")) == "ReadOnlyIndex"
        assert code_of(lambda i=i: client.lock_pcr(i)) == "ReadOnlyIndex"
    for i in (32, 100, 0xFFFF):
        assert code_of(lambda i=i: client.describe_pcr(i)) == "InvalidIndex"
        assert code_of(lambda i=i: client.extend_pcr(i, b"x")) == "InvalidIndex"
        assert code_of(lambda i=i: client.lock_pcr(i)) == "InvalidIndex"
    client.extend_pcr(16, b"x")
    client.lock_pcr(16)
    assert client.describe_pcr(16).locked
    assert code_of(lambda: client.extend_pcr(16, b"y")) == "ReadOnlyIndex"
    assert code_of(lambda: client.lock_pcr(16)) == "ReadOnlyIndex"


def test_lock_pcrs_locks_a_prefix(pki):
    nsm, client = make(pki)
    client.lock_pcrs(0)
    client.lock_pcrs(16)
    assert nsm.locked_pcrs == frozenset(range(16))
    client.lock_pcrs(20)
    assert nsm.locked_pcrs == frozenset(range(20))
    assert code_of(lambda: client.lock_pcrs(33)) == "InvalidIndex"
    assert code_of(lambda: client.extend_pcr(19, b"x")) == "ReadOnlyIndex"
    client.extend_pcr(20, b"x")
    client.lock_pcrs(32)
    assert client.describe_nsm().locked_pcrs == tuple(range(32))


def test_get_random_answers_256_fresh_bytes(pki):
    nsm, _ = make(pki)
    answers = [cbor2.loads(nsm.handle(cbor2.dumps("GetRandom"))) for _ in range(3)]
    randoms = [a["GetRandom"]["random"] for a in answers]
    assert all(len(r) == 256 for r in randoms) and len(set(randoms)) == 3


def test_malformed_requests_get_device_errors(pki):
    nsm, _ = make(pki)

    def ask(raw: bytes):
        return cbor2.loads(nsm.handle(raw))

    assert ask(b"\xff\x00") == {"Error": "InvalidOperation"}
    assert ask(cbor2.dumps("Reboot")) == {"Error": "InvalidOperation"}
    assert ask(cbor2.dumps({"DescribePCR": {"index": 70000}})) == {"Error": "InvalidArgument"}
    assert ask(cbor2.dumps({"ExtendPCR": {"index": 16}})) == {"Error": "InvalidArgument"}
    assert ask(bytes(4097)) == {"Error": "InputTooLarge"}
    assert ask("DescribeNSM") == {"Error": "InvalidOperation"}  # type: ignore[arg-type]


# -- attestation -------------------------------------------------------------------------------


def test_attestation_document_verifies_against_the_test_root_only(pki):
    _, client = make(pki)
    doc_bytes = client.attestation(nonce=b"nonce", user_data=b"ud", public_key=b"pk")
    doc = verify(doc_bytes, roots=[pki.root_certificate], at=T0 + timedelta(seconds=1))
    assert doc.module_id == MODULE_ID and doc.digest == "SHA384"
    assert doc.timestamp == 1772366400123  # T0 in ms, from the injected clock
    assert (doc.nonce, doc.user_data, doc.public_key) == (b"nonce", b"ud", b"pk")
    assert dict(doc.pcrs) == BOOT
    with pytest.raises(UntrustedRootError):
        verify(doc_bytes, at=T0)


def test_document_is_shaped_like_a_real_one(pki):
    _, client = make(pki)
    raw = client.attestation()
    assert raw[:7] == bytes.fromhex("8444a1013822a0")  # untagged, protected {1:-35}, {}
    doc = parse_document(raw)
    assert (doc.nonce, doc.user_data, doc.public_key) == (None, None, None)
    assert len(doc.signature) == 96 and len(doc.cabundle) == 4
    assert doc.cabundle[0] == pki.root_certificate.public_bytes(Encoding.DER)
    payload = cbor2.loads(doc.payload)
    assert payload["nonce"] is None and payload["user_data"] is None


def test_only_locked_pcrs_are_attested(pki):
    _, client = make(pki)
    client.extend_pcr(16, b"config")
    client.extend_pcr(17, b"other")
    assert sorted(parse_document(client.attestation()).pcrs) == list(range(16))
    client.lock_pcr(16)
    doc = parse_document(client.attestation())
    assert sorted(doc.pcrs) == [*range(16), 16]
    assert doc.pcrs[16] == extend(ZERO_PCR, b"config")


def test_attestation_field_limits(pki):
    _, client = make(pki)
    top = bytes(MAX_ATTESTATION_FIELD)
    doc = parse_document(client.attestation(user_data=top, nonce=top, public_key=top))
    assert doc.nonce == top
    for field in ("user_data", "nonce", "public_key"):
        too_big = {field: bytes(MAX_ATTESTATION_FIELD + 1)}
        assert code_of(lambda too_big=too_big: client.attestation(**too_big)) == "InputTooLarge"


def test_clock_moves_the_timestamp(pki):
    now = [T0]
    _, client = make(pki, clock=lambda: now[0])
    first = parse_document(client.attestation()).timestamp
    now[0] = T0 + timedelta(minutes=5)
    assert parse_document(client.attestation()).timestamp - first == 300_000


def test_debug_mode_zeroes_pcr0_to_3_and_keeps_pcr4(pki):
    nsm, client = make(pki, debug=True)
    assert nsm.debug
    doc_bytes = client.attestation()
    doc = verify(doc_bytes, Policy(allow_debug=True), roots=[pki.root_certificate], at=T0)
    assert all(doc.pcrs[i] == ZERO_PCR for i in (0, 1, 2, 3))
    assert doc.pcrs[4] == BOOT[4] and doc.is_debug
    with pytest.raises(DebugEnclaveError):
        verify(doc_bytes, roots=[pki.root_certificate], at=T0)


def test_signing_failure_is_internal_error_not_an_exception(pki):
    _, client = make(pki, clock=lambda: datetime(2099, 1, 1, tzinfo=UTC))  # after the root
    assert code_of(client.attestation) == "InternalError"


# -- concurrency and robustness ----------------------------------------------------------------


def test_concurrent_extends_lose_nothing(pki):
    nsm, client = make(pki)
    results: list[bytes] = []
    lock = threading.Lock()

    def worker():
        for _ in range(25):
            value = client.extend_pcr(16, b"tick")
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expected = ZERO_PCR
    chain = set()
    for _ in range(200):
        expected = extend(expected, b"tick")
        chain.add(expected)
    assert set(results) == chain and len(results) == 200
    assert nsm.pcrs[16] == expected


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=40)
    | st.text(max_size=12)
    | st.sampled_from(["DescribeNSM", "GetRandom", "LockPCR", "index", "data", "range"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["DescribePCR", "ExtendPCR", "LockPCR", "LockPCRs", "Attestation", "index", "data"]
            )
            | st.text(max_size=6),
            inner,
            max_size=3,
        )
    ),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | cbor_values.map(cbor2.dumps))
def test_handle_never_raises_and_always_answers_cbor(pki, raw):
    nsm, _ = make(pki)
    answer = cbor2.loads(nsm.handle(raw))
    if isinstance(answer, dict) and "Error" in answer:
        assert answer["Error"] in ERROR_CODES
    # boot PCRs cannot change whatever is sent
    assert all(nsm.pcrs[i] == BOOT[i] for i in range(16))


# -- model-based: the PCR bank against a dictionary ---------------------------------------------


class PcrBankMachine(RuleBasedStateMachine):
    """Random sequences of extend/lock/describe agree with a plain model of the bank."""

    pki = TestPKI.generate(not_before=T0 - timedelta(days=1))

    def __init__(self) -> None:
        super().__init__()
        self.nsm = SimulatedNsm(self.pki, pcrs=BOOT, module_id=MODULE_ID, clock=lambda: T0)
        self.client = NsmClient(self.nsm.handle)
        self.values = {i: BOOT.get(i, ZERO_PCR) for i in range(32)}
        self.locked = set(range(16))

    index = st.integers(0, 40)

    @rule(index=index, data=st.binary(max_size=64))
    def extend(self, index, data):
        try:
            got = self.client.extend_pcr(index, data)
        except NsmError as e:
            assert e.nsm_code == ("InvalidIndex" if index >= 32 else "ReadOnlyIndex")
            assert index >= 32 or index in self.locked
            return
        assert index < 32 and index not in self.locked
        self.values[index] = extend(self.values[index], data)
        assert got == self.values[index]

    @rule(index=index)
    def lock(self, index):
        try:
            self.client.lock_pcr(index)
        except NsmError as e:
            assert e.nsm_code == ("InvalidIndex" if index >= 32 else "ReadOnlyIndex")
            return
        assert index < 32 and index not in self.locked
        self.locked.add(index)

    @rule(range_=st.integers(0, 34))
    def lock_range(self, range_):
        try:
            self.client.lock_pcrs(range_)
        except NsmError as e:
            assert e.nsm_code == "InvalidIndex" and range_ > 32
            return
        self.locked.update(range(range_))

    @precondition(lambda self: len(self.locked) > 16)
    @rule()
    def attest(self):
        doc = parse_document(self.client.attestation())
        assert dict(doc.pcrs) == {i: self.values[i] for i in self.locked}

    @invariant()
    def describe_matches(self):
        desc = self.client.describe_nsm()
        assert desc.locked_pcrs == tuple(sorted(self.locked))
        for i in (16, 17, 31):
            info = self.client.describe_pcr(i)
            assert (info.locked, info.data) == (i in self.locked, self.values[i])


PcrBankMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
test_pcr_bank_model = PcrBankMachine.TestCase
