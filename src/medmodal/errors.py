"""One exception family for everything a user can get wrong.

The CLI prints any :class:`MedmodalError` as one line and exits non-zero; with
``--skip-bad`` a :class:`DataError` is collected into a :class:`BadSampleLog`
and listed in the run report instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class MedmodalError(Exception):
    """Base class for errors caused by user input (data, config, checkpoint)."""


class ConfigError(MedmodalError):
    """An experiment config or schema is invalid."""


class ManifestError(MedmodalError):
    """A manifest as a whole is unusable (empty, wrong columns, bad labels)."""


class CheckpointError(MedmodalError):
    """A checkpoint cannot be read or does not fit the request."""


class DatasetError(MedmodalError):
    """A built-in dataset is missing, altered or cannot be prepared."""


class DataError(MedmodalError):
    """One sample (row) cannot be used: names the sample, the file and why."""

    def __init__(
        self,
        reason: str,
        *,
        sample_id: str | None = None,
        path: str | Path | None = None,
        modality: str | None = None,
    ) -> None:
        self.reason = reason
        self.sample_id = sample_id
        self.path = None if path is None else str(path)
        self.modality = modality
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.sample_id is not None:
            parts.append(f"sample {self.sample_id!r}")
        if self.modality is not None:
            parts.append(f"modality {self.modality!r}")
        if self.path is not None:
            parts.append(f"file {self.path}")
        where = ", ".join(parts)
        return f"{where}: {self.reason}" if where else self.reason

    def with_context(
        self, *, sample_id: str | None = None, modality: str | None = None
    ) -> DataError:
        """Return a copy that also names the sample/modality (keeps known fields)."""
        return DataError(
            self.reason,
            sample_id=self.sample_id if self.sample_id is not None else sample_id,
            path=self.path,
            modality=self.modality if self.modality is not None else modality,
        )

    def to_dict(self) -> dict[str, str | None]:
        return {
            "sample_id": self.sample_id,
            "modality": self.modality,
            "path": self.path,
            "reason": self.reason,
        }


@dataclass
class BadSampleLog:
    """Samples skipped with ``--skip-bad`` (never silently)."""

    errors: list[DataError] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        self.errors.append(err)

    def __len__(self) -> int:
        return len(self.errors)

    def ids(self) -> set[str]:
        return {e.sample_id for e in self.errors if e.sample_id is not None}

    def to_list(self) -> list[dict[str, str | None]]:
        return [e.to_dict() for e in self.errors]
