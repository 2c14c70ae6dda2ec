"""What a sandboxed run may use (SandboxLimits) and what came of it (SandboxResult)."""

from __future__ import annotations

import dataclasses
import math

from llm.errors import ConfigError

# Fixed limits (not per call): the largest file the code may write, the size of its work dir
# (a tmpfs where a mount namespace is available), and its open file descriptors.
FILE_SIZE_BYTES = 16 << 20
WORKDIR_BYTES = 32 << 20
OPEN_FILES = 64


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0  # wall clock; the whole process group is killed at the deadline
    memory_mb: int = 256  # RLIMIT_AS (address space, not resident memory)
    cpu_s: int | None = None  # RLIMIT_CPU (None: ceil(timeout_s) + 1)
    max_output_bytes: int = 65536  # of stdout and of stderr each; the rest is dropped

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"SandboxLimits.timeout_s={self.timeout_s!r}: give a positive number of seconds")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 32:
            raise ConfigError(
                f"SandboxLimits.memory_mb={self.memory_mb!r}: give an int >= 32 (Python itself needs ~20 MB)")
        if self.cpu_s is not None and (not isinstance(self.cpu_s, int) or self.cpu_s < 1):
            raise ConfigError(f"SandboxLimits.cpu_s={self.cpu_s!r}: give an int >= 1, or None for ceil(timeout_s) + 1")
        if not isinstance(self.max_output_bytes, int) or self.max_output_bytes < 0:
            raise ConfigError(f"SandboxLimits.max_output_bytes={self.max_output_bytes!r}: give an int >= 0")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """status: "ok" | "error" (non-zero exit, uncaught exception) | "timeout" (wall-clock deadline
    or RLIMIT_CPU) | "memory" (MemoryError or died of the address-space limit) | "killed" (any
    other signal)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"
