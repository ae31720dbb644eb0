"""The two objects a parent fetches: the EIF (named by its SHA-384) and the toolkit archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from attestation.eif import read_eif
from attestation.errors import CodedError, Kind

from .template import EIF_PREFIX, TOOLKIT_PREFIX

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLKIT_PATHS = ("pyproject.toml", "README.md", "attestation", "enclave", "parent")
SOURCE_DATE_EPOCH = 0  # fixed mtimes in the toolkit archive
EIF_MEMORY_FACTOR = 4  # nitro-cli refuses (E26) an enclave smaller than 4x its EIF


class ArtifactError(CodedError):
    """An EIF or toolkit problem, with a stable ``code``."""

    codes = {"bad-eif": Kind.BAD_REQUEST, "memory-too-small": Kind.BAD_REQUEST}


@dataclass(frozen=True)
class Eif:
    path: Path
    sha384: str  # of the whole file, checked by the parents before they run it
    pcrs: dict[int, str]  # measured by attestation.eif (PCR0/1/2, and 8 when signed)
    size: int

    @property
    def key(self) -> str:
        return f"{EIF_PREFIX}{self.sha384}.eif"


def measure_eif(path: Path) -> Eif:
    """Read, measure and hash an EIF (typed error when it is not one)."""
    from attestation.errors import EifError

    try:
        image = read_eif(path)
        data = path.read_bytes()
    except EifError as exc:
        raise ArtifactError("bad-eif", f"{path}: {exc.message}") from exc
    except OSError as exc:
        raise ArtifactError("bad-eif", f"{path}: {exc.strerror or exc}") from exc
    return Eif(
        path=path,
        sha384=hashlib.sha384(data).hexdigest(),
        pcrs={i: v.hex() for i, v in image.pcrs.items()},
        size=len(data),
    )


def check_memory(eif: Eif, memory_mib: int) -> None:
    size_mib = -(-eif.size // (1 << 20))
    if memory_mib < EIF_MEMORY_FACTOR * size_mib:
        raise ArtifactError(
            "memory-too-small",
            f"enclave memory {memory_mib} MiB < {EIF_MEMORY_FACTOR} x EIF size ({size_mib} MiB); "
            f"nitro-cli would fail with E26: use --memory-mib {EIF_MEMORY_FACTOR * size_mib}+",
        )


def toolkit_tarball(source_dir: Path = PROJECT_ROOT) -> bytes:
    """A reproducible .tar.gz of the toolkit (sorted, fixed mtimes/owners, no caches)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top in TOOLKIT_PATHS:
            path = source_dir / top
            if not path.exists():
                continue
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(source_dir)
                if "__pycache__" in rel.parts or file.suffix in (".pyc", ".pyo"):
                    continue
                info = tar.gettarinfo(str(file), arcname=str(rel))
                info.mtime = SOURCE_DATE_EPOCH
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(file, "rb") as fh:
                    tar.addfile(info, fh)
    return gzip.compress(raw.getvalue(), mtime=SOURCE_DATE_EPOCH)


def toolkit_key(archive: bytes) -> str:
    return f"{TOOLKIT_PREFIX}{hashlib.sha256(archive).hexdigest()}.tar.gz"
