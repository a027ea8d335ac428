"""Built-in datasets: each knows its files (with checksums), where they come from, and
how to write the standard manifest + schema, so they travel the same path as user data.

A dataset is one file: a :class:`BuiltinDataset` subclass (``info``, ``locate`` and ``write``,
the latter a few named steps) and a strict options model (a :class:`~medmodal.options.Strict`
subclass) declared where it is registered: ``DATASETS.register("name", options=Options)(Cls)``.
Options reach ``write`` validated, from ``medmodal datasets prepare NAME -o key=value``, a
config's ``data.dataset_options`` or ``prepare(out_dir, data_dir, key=value)``; a misspelled or
mistyped one is a ConfigError naming it and the allowed ones."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medmodal.errors import DatasetError
from medmodal.options import Strict, parse_options
from medmodal.registry import Registry
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


class NoOptions(Strict):
    """The options model of a dataset that takes none."""


class BuiltinDataset:
    """Subclasses set ``info`` (``info.name`` is the registered name) and implement ``locate``
    and ``write``; the options model is declared at registration."""

    info: DatasetInfo

    def __init__(self, options: BaseModel | None = None) -> None:
        self._options = options

    @property
    def options(self) -> BaseModel:
        """The options it was created with (the registered model's defaults when none)."""
        if self._options is None:
            self._options = dataset_options(self.info.name, None)
        return self._options

    def prepare(
        self, out_dir: str | Path, data_dir: str | Path | None = None, **options: Any
    ) -> Prepared:
        """Write the manifest + schema into ``out_dir``; keyword ``options`` override the ones
        it was created with and are validated first (a ConfigError names a bad one)."""
        opts = self.options
        if options:
            given = {**opts.model_dump(exclude_unset=True), **options}
            opts = dataset_options(self.info.name, given)
        return self.write(Path(out_dir), None if data_dir is None else Path(data_dir), opts)

    def write(self, out_dir: Path, data_dir: Path | None, options: Any) -> Prepared:
        """Read and verify the files, label, build the manifest frame, write it with its schema
        and return the facts; ``options`` is an instance of the registered options model."""
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


def dataset_options(name: str, options: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    """``options`` validated against the model dataset ``name`` registered: a misspelled or
    mistyped option is a ConfigError naming it (and the allowed ones)."""
    model = DATASETS.options_model(name)
    return parse_options(model, options, f"dataset {name!r} options")


def get_dataset(name: str, options: Mapping[str, Any] | BaseModel | None = None) -> BuiltinDataset:
    """Built-in dataset ``name``, created with ``options`` (validated). The built-ins are
    registered already: importing this module runs ``medmodal.datasets``' ``__init__`` first."""
    return DATASETS.get(name)(options=dataset_options(name, options))


def prepare_dataset(
    name: str,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Prepared:
    """Write built-in dataset ``name`` as manifest + schema into ``out_dir``; ``options`` are
    validated first (no file is read for a bad one); ``data_dir`` defaults as in
    :func:`resolve_data_dir`."""
    return get_dataset(name, options).prepare(out_dir, resolve_data_dir(data_dir))
