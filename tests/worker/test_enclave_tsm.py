"""Hardware evidence through configfs-tsm (worker/enclave/tsm.py), against a stand-in for the
kernel's report entries: real SEV-SNP and TDX outblobs from real machines (tests/data), which the
agent packages and the shared verifier then checks. No CPU here can sign our binding, so the
verdict refuses; what the tests show is that the agent wrote exactly the binding as inblob, sent
what the kernel gave, cleaned up, and that the verifier got as far as the binding."""

import base64
import subprocess
import sys

import pytest

from client import binding
from client.attestation.enclave import EvidencePolicy, verify_enclave_evidence
from client.sealing import public_key_raw
from worker.enclave import tsm
from worker.enclave.runtime import EnclaveError, EnclaveRuntime
from tests.support.attestation import ARK, ASK, SNP_NOW, SNP_REPORT, TDX_QUOTE, VCEK, cert_table

MODEL = "sha256:" + "ab" * 32
CODE = "sha256:" + "cd" * 32
NONCE = bytes(range(32))


class FakeKernel:
    """Stands in for configfs: mkdir in the report directory gives an entry with the provider's
    attributes, and removing it removes them; what the agent wrote to inblob is kept."""

    def __init__(self, provider: str, outblob: bytes, auxblob: bytes | None):
        self.provider, self.outblob, self.auxblob = provider, outblob, auxblob
        self.inblobs: list[bytes] = []
        self.made = 0

    def install(self, monkeypatch):
        monkeypatch.setattr(tsm, "_new_entry", self.new_entry)
        monkeypatch.setattr(tsm, "_remove_entry", self.remove_entry)
        return self

    def new_entry(self, root):
        entry = root / f"entry-{self.made}"
        self.made += 1
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        return entry

    def remove_entry(self, entry):
        if (entry / "inblob").exists():
            self.inblobs.append((entry / "inblob").read_bytes())
        for child in entry.iterdir():
            child.unlink()
        entry.rmdir()


@pytest.fixture
def snp_kernel(tmp_path, monkeypatch):
    return FakeKernel("sev_guest", SNP_REPORT, cert_table({"vcek": VCEK, "ask": ASK, "ark": ARK})).install(monkeypatch)


def test_snp_evidence_carries_the_report_and_certificates_for_exactly_the_binding(tmp_path, snp_kernel):
    enclave = tsm.TsmEnclave(root=tmp_path)

    evidence = enclave.evidence(model_digest=MODEL, code_measurement=CODE, nonce=NONCE)

    assert enclave.kind == evidence["kind"] == "sev-snp"
    assert base64.b64decode(evidence["report"]) == SNP_REPORT
    assert base64.b64decode(evidence["certificates"]) == snp_kernel.auxblob
    assert snp_kernel.inblobs == [binding.report_data(
        enclave_public_key=public_key_raw(enclave.public_key), signing_key=base64.b64decode(enclave.signing_key),
        model_digest=MODEL, code_measurement=CODE, nonce=NONCE)]
    assert list(tmp_path.iterdir()) == []  # every entry removed
    verdict = verify_enclave_evidence(evidence, expected_nonce=NONCE, policy=EvidencePolicy(), now=SNP_NOW)
    # The real report signs another machine's report data: refused at the binding (and for its debug policy).
    assert set(verdict.problems) == {"guest policy allows debugging", "REPORT_DATA is not the expected nonce binding"}


def test_the_runtime_announces_the_hardware_kind(tmp_path, snp_kernel):
    runtime = EnclaveRuntime([], enclave=tsm.TsmEnclave(root=tmp_path), code_measurement=CODE)

    assert runtime.ready_message()["kind"] == "sev-snp"


def test_an_snp_host_without_certificates_cannot_give_verifiable_evidence(tmp_path, monkeypatch):
    FakeKernel("sev_guest", SNP_REPORT, None).install(monkeypatch)

    with pytest.raises(EnclaveError) as refused:
        tsm.TsmEnclave(root=tmp_path).evidence(model_digest=MODEL, code_measurement=CODE, nonce=NONCE)

    assert refused.value.code == "evidence_unavailable" and "certificates" in refused.value.message


def test_tdx_evidence_needs_a_pccs_for_its_collateral(tmp_path, monkeypatch):
    FakeKernel("tdx_guest", TDX_QUOTE, None).install(monkeypatch)
    enclave = tsm.TsmEnclave(root=tmp_path)

    with pytest.raises(EnclaveError) as refused:
        enclave.evidence(model_digest=MODEL, code_measurement=CODE, nonce=NONCE)

    assert enclave.kind == "tdx" and "PCCS" in refused.value.message
    assert list(tmp_path.iterdir()) == []


def test_no_configfs_tsm_means_no_hardware_enclave(tmp_path):
    with pytest.raises(tsm.TsmUnavailable, match="--enclave simulated"):
        tsm.TsmEnclave(root=tmp_path / "absent")


def test_an_unknown_provider_is_refused_at_start(tmp_path, monkeypatch):
    FakeKernel("arm_cca_guest", b"token", None).install(monkeypatch)

    with pytest.raises(tsm.TsmUnavailable, match="arm_cca_guest"):
        tsm.TsmEnclave(root=tmp_path)


def test_the_agent_on_a_machine_without_a_tee_stops_with_a_clear_reason():
    # /sys/kernel/config/tsm/report does not exist on the machines tests run on.
    if tsm.TSM_ROOT.is_dir():
        pytest.skip("this machine is a TEE guest")
    agent = subprocess.run([sys.executable, "-m", "worker", "--server", "http://127.0.0.1:9", "--token", "t",
                            "--enclave", "tsm", "--embeddings", "none"], capture_output=True, text=True, timeout=120,
                           cwd=tsm.__file__.rsplit("/worker/", 1)[0])

    assert agent.returncode == 1
    assert "not a TDX or SEV-SNP guest" in agent.stderr
