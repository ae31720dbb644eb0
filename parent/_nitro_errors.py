"""nitro-cli error codes (CLI ``src/common/document_errors.rs``; UG cli-errors) with the fix that
usually applies. ``explain(code)`` never fails: unknown codes get a generic entry."""

from __future__ import annotations

import re
from dataclasses import dataclass

HELP_URL = "https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#{code}"
CODE_RE = re.compile(r"\[\s*(E\d{2})\s*\]")


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    explanation: str
    fix: str


_ALLOCATOR = (
    "Enclave memory and CPUs come from the allocator: edit /etc/nitro_enclaves/allocator.yaml "
    "(memory_mib, cpu_count), then `sudo systemctl restart nitro-enclaves-allocator.service`."
)
_BOOT = (
    "Check the EIF (`python -m attestation pcrs --eif FILE` must read it cleanly), that a signed "
    "EIF's signing certificate has not expired (`nitro-cli describe-eif`), and that --memory is "
    "at least 4x the EIF file size; rerun with --debug-mode and `nitro-cli console` to see the "
    "enclave's boot log."
)

_TABLE: dict[str, tuple[str, str]] = {
    "E01": ("Missing mandatory argument.", "Pass every required option (see `nitro-cli --help`)."),
    "E02": ("Conflicting arguments.", "Pass only one of the conflicting options."),
    "E03": ("Invalid argument (not a valid integer or value).", "Fix the argument's value."),
    "E07": (
        "Cannot read the enclave sockets directory (/run/nitro_enclaves).",
        "Run the Nitro Enclaves configuration (install aws-nitro-enclaves-cli) and check "
        "that your user is in the `ne` group.",
    ),
    "E11": (
        "Socket error while talking to the enclave process.",
        "The enclave process may have died (often a boot failure or an expired signing "
        "certificate): check `nitro-cli describe-enclaves` and " + _BOOT,
    ),
    "E18": (
        "Log file permissions error (/var/log/nitro_enclaves).",
        "Run nitro-cli as the user that owns the log, or fix its permissions.",
    ),
    "E19": (
        "File operation failure, e.g. /dev/nitro_enclaves or the EIF could not be opened.",
        "If the file is /dev/nitro_enclaves: the Nitro Enclaves driver is missing or disabled. "
        "Launch an instance type that supports enclaves WITH EnclaveOptions Enabled=true, "
        "install aws-nitro-enclaves-cli (`sudo dnf install -y aws-nitro-enclaves-cli`), "
        "enable nitro-enclaves-allocator.service and add your user to the `ne` group "
        "(log out and in). Otherwise check the named file's path and permissions.",
    ),
    "E20": ("The same CPU id was given twice.", "List each CPU id once."),
    "E21": ("A requested CPU is not in the enclave CPU pool.", _ALLOCATOR),
    "E22": ("More CPUs requested than the enclave CPU pool holds.", _ALLOCATOR),
    "E26": (
        "Insufficient memory requested: nitro-cli needs at least 4x the EIF file size.",
        "Increase --memory (MiB) to at least 4x the EIF size, and the allocator's "
        "memory_mib with it. " + _ALLOCATOR,
    ),
    "E27": (
        "Insufficient memory available: more memory requested than the allocator reserved.",
        "Lower --memory or raise memory_mib. " + _ALLOCATOR,
    ),
    "E29": (
        "An ioctl on /dev/nitro_enclaves failed.",
        "Usually resources (hugepages, CPUs) are not reserved or another run-enclave was "
        "running in parallel: restart nitro-enclaves-allocator.service, run enclaves one at a "
        "time, and check `dmesg` for nitro_enclaves messages.",
    ),
    "E35": (
        "EIF file parsing error while loading it into enclave memory.",
        "The hugepages may not be available: restart the allocator. " + _BOOT,
    ),
    "E36": ("Enclave boot failure: no `ready` signal from the enclave.", _BOOT),
    "E39": (
        "Enclave process connection failure.",
        "The enclave process exited, often because the enclave failed to boot. " + _BOOT,
    ),
    "E44": (
        "Cannot connect to the enclave console.",
        "The console is only available for enclaves started with --debug-mode (their "
        "attestation PCRs are all zero). Restart the enclave with --debug-mode to debug it.",
    ),
    "E48": (
        "EIF building error.",
        "Check that the Docker daemon runs and your user may use it (group `docker`), that "
        "the image exists (`docker images`), and that the blobs are installed "
        "(/usr/share/nitro_enclaves/blobs or NITRO_CLI_BLOBS). New Docker releases have "
        "broken older nitro-cli builds: update aws-nitro-enclaves-cli.",
    ),
    "E49": ("Docker image build error.", "Build the image with `docker build` to see why."),
    "E50": (
        "Docker image pull error: the image is neither local nor pullable.",
        "Build or pull the image first (`make image`), and check the --docker-uri spelling.",
    ),
    "E51": ("Artifacts path not set.", "Set HOME or NITRO_CLI_ARTIFACTS."),
    "E52": ("Blobs path not set.", "Set NITRO_CLI_BLOBS=/usr/share/nitro_enclaves/blobs/."),
    "E58": ("Invalid enclave name.", "Use an existing enclave name (`describe-enclaves`)."),
    "E59": (
        "EIF signature check failed.",
        "The signing certificate is invalid or expired: re-sign the EIF (`sign-eif`).",
    ),
    "E60": (
        "EIF signing error.",
        "Check the --signing-certificate and --private-key paths (or the KMS key and credentials).",
    ),
}


def explain(code: str) -> ErrorInfo:
    """What ``code`` means and how it is usually fixed (generic when unknown)."""
    if code in _TABLE:
        explanation, fix = _TABLE[code]
        return ErrorInfo(code, explanation, fix)
    return ErrorInfo(
        code,
        f"nitro-cli error {code}.",
        f"See {HELP_URL.format(code=code)} and `nitro-cli explain --error-code {code}`.",
    )


def find_code(stderr: str) -> str | None:
    """The first ``[ Exx ]`` code in nitro-cli's stderr, if any."""
    match = CODE_RE.search(stderr)
    return match.group(1) if match else None

