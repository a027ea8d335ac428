"""Built-in datasets: each knows its files (with checksums), where they come from, and
how to write the standard manifest + schema, so they travel the same path as user data."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medmodal.errors import DatasetError
from medmodal.options import parse_options
from medmodal.registry import Registry, signature_options
from medmodal.utils.io import file_digest

ENV_DATA_DIR = "MEDMODAL_DATA_DIR"


@dataclass
class DatasetInfo:
    name: str
    title: str
    task: str
    modalities: dict[str, str]
    size: str
    source: str
    citation: str
    licence: str
    pairing: str = "single modality"
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    """What ``prepare`` wrote: the manifest and schema paths (plus a few facts)."""

    manifest: Path
    schema: Path
    facts: dict[str, Any] = field(default_factory=dict)


class BuiltinDataset:
    """Subclasses set ``info`` and implement ``prepare``."""

    info: DatasetInfo

    def prepare(self, out_dir: Path, data_dir: Path | None = None, **options: Any) -> Prepared:
        raise NotImplementedError

    def locate(self, data_dir: Path | None) -> Path:
        """Folder holding this dataset's files (``data_dir/<folder>``)."""
        raise NotImplementedError


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir`` argument, else $MEDMODAL_DATA_DIR, else ~/.cache/medmodal/data if it exists."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().resolve()
    default = Path.home() / ".cache" / "medmodal" / "data"
    return default if default.is_dir() else None


def require_file(
    path: Path, dataset: str, source: str, digest: str | None = None, algo: str = "md5"
) -> Path:
    """Check a dataset file exists and (if a digest is known) is unaltered."""
    if not path.is_file():
        raise DatasetError(
            f"{dataset}: file {path} is missing. It comes from {source}. Put it there, point "
            f"--data-dir / ${ENV_DATA_DIR} at the folder that holds it, or use --download when online."
        )
    if digest:
        got = file_digest(path, algo)
        if got != digest:
            raise DatasetError(
                f"{dataset}: file {path} is altered or incomplete ({algo} {got}, expected {digest}). "
                f"Fetch it again from {source}."
            )
    return path


def download(url: str, dest: Path, digest: str | None = None, algo: str = "md5") -> Path:
    """Download ``url`` to ``dest`` (for users who are online) and verify its digest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url}: {exc}") from None
    if digest and file_digest(tmp, algo) != digest:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} has the wrong {algo} checksum")
    tmp.replace(dest)
    return dest


def get_dataset(name: str) -> BuiltinDataset:
    from medmodal import datasets as _  # noqa: F401  (registers built-ins)

    return DATASETS.create(name)


def prepare_dataset(
    name: str,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Prepared:
    """Write built-in dataset ``name`` as manifest + schema into ``out_dir``.

    ``options`` are checked against the dataset's ``prepare`` keyword parameters first: a
    misspelled or mistyped option is a ConfigError naming it and the allowed ones."""
    ds = get_dataset(name)
    model = signature_options(ds.prepare, ("out_dir", "data_dir"), f"{name}_options")
    opts = parse_options(model, options, f"dataset {name!r} options")
    kwargs = {k: getattr(opts, k) for k in type(opts).model_fields}
    return ds.prepare(Path(out_dir), resolve_data_dir(data_dir), **kwargs)
