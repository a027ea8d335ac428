"""PTB-XL (Wagner et al., Sci. Data 2020): 12-lead ECG + cardiologist's report + demographics,
paired per record (the same patient, the same visit).

``prepare`` writes a manifest with

* a **multilabel target** over the five diagnostic superclasses NORM / MI / STTC / CD / HYP:
  the ``diagnostic_class`` of every ``scp_codes`` statement with ``diagnostic == 1`` in
  ``scp_statements.csv``, at any likelihood (Strodthoff et al. 2021's ``superdiagnostic`` labels).
  Records with no diagnostic statement are **excluded** by default, as in Strodthoff et al.
  (``no_diagnostic="exclude"``; they are listed in ``excluded.csv`` and in the facts), or kept
  with all five labels 0 (``no_diagnostic="keep"``).
* modalities ``ecg`` (signal: the WFDB record, 12 leads at 100 Hz, 1000 samples, in format 16
  or in WFDB's lossless FLAC format 516 with two signal files; the files are those each
  record's header names),
  ``report`` (text: the cardiologist's free-text report in German, English or Swedish; it
  usually *states the diagnosis*, so a model reading it reads the cardiologist's words; one
  report, ecg_id 443, is a single space and so an absent modality) and
  ``demo`` (tabular: age, sex, height, weight; missing values are imputed with indicators by
  the tabular processor). Ages above 89 are capped at 90 (= "90 or older"), the
  de-identification PhysioNet applied from v1.0.2 on.
* a **split** column from ``strat_fold``: folds 1-8 train, 9 val, 10 test (the recommended
  split). ``strat_fold`` is assigned per patient; ``prepare`` checks that no patient is in two
  splits.

``report_mask=True`` masks the diagnostic vocabulary of the reports (every report word that
contains one of :data:`MASK_STEMS` or equals one of :data:`MASK_WORDS`, plus the SCP codes)
through the text processor's ``mask_terms``. Masking across three languages is partial: the
masked report still describes rhythm, axis and findings in the cardiologist's words.

Files are checked against PhysioNet's SHA-256 values (package file ``checksums/ptbxl.sha256``,
the 1,987-record subset): the two CSVs always, every header and the signal files it names for
presence, and every file's digest with ``verify="all"``. A folder holding other records (e.g. the 8,976 with
ecg_id < 9000) is checked against its own ``SHA256SUMS.txt`` for the files the package does not
know, and its ``ptbxl_database.csv`` row by row against ``ptbxl_database_full.csv``.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from medmodal.data.readers.signal import wfdb_signal_files
from medmodal.data.schema import Schema
from medmodal.datasets.base import DATASETS, BuiltinDataset, DatasetInfo, Prepared, require_file
from medmodal.errors import DataError, DatasetError
from medmodal.options import Strict
from medmodal.utils.io import file_digest

SOURCE = (
    "PhysioNet PTB-XL (Wagner et al. 2020, https://physionet.org/content/ptb-xl/, CC BY 4.0), "
    "records at 100 Hz"
)
CITATION = (
    "Wagner P., Strodthoff N., Bousseljot R.-D., Kreiseler D., Lunze F.I., Samek W., Schaeffter T. "
    "PTB-XL, a large publicly available electrocardiography dataset. Scientific Data 7, 154 (2020). "
    "Goldberger A.L. et al. PhysioBank, PhysioToolkit, and PhysioNet. Circulation 101(23) (2000)."
)
SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
SPLIT_OF_FOLD: dict[int, str] = {**{f: "train" for f in range(1, 9)}, 9: "val", 10: "test"}
AGE_CAP = 90
SUBGROUPS = {"sex": {"column": "sex"}, "age": {"column": "age", "bins": [40, 60, 80]}}  # report
DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
CHECKSUMS = "ptbxl.sha256"
FULL_DATABASE = "ptbxl_database_full.csv"  # the whole release's metadata, when the folder has it
FOLDER_SUMS = "SHA256SUMS.txt"
DEMO_NUMERIC = ["age", "height", "weight"]
FULL_ECG: dict[str, Any] = {"standardize": "fit"}
# Strodthoff et al. 2021's recipe at 100 Hz: 250-sample (2.5 s) random crops for training,
# windows of 250 every 125 samples averaged at test, one standard scaler fitted on train.
REFERENCE_ECG: dict[str, Any] = {
    "standardize": "global",
    "crop": 250,
    "windows": {"length": 250, "hop": 125, "aggregate": "mean"},
}
ECG_RECIPES = {"full": FULL_ECG, "reference": REFERENCE_ECG}

# Diagnostic vocabulary for ``report_mask``: a report word is masked when it contains a stem
# (German / English / Swedish) or equals a word below. Chosen from the five superclasses'
# names and findings, not from the labels of any record.
MASK_STEMS: tuple[str, ...] = (
    "norm",
    "patholog",
    "infar",
    "infark",
    "myokard",
    "myocard",
    "isch",
    "isc",
    "st-",
    "-st",
    "senkung",
    "hebung",
    "sänkning",
    "depress",
    "elevat",
    "invert",
    "inversion",
    "flach",
    "flat",
    "strain",
    "belast",
    "repolar",
    "t-förändr",
    "t-verae",
    "t-ver",
    "digitalis",
    "hypokal",
    "electrolyt",
    "elektrolyt",
    "block",
    "skänkel",
    "schenkel",
    "fascic",
    "faszik",
    "leitungs",
    "intraventr",
    "bbb",
    "hypertro",
    "hypertrof",
    "enlarg",
    "sokolow",
    "amplitud",
    "voltage",
    "sinistrocard",
    "dextrocard",
    "verbreiter",
    "überlast",
    "ueberlast",
    "inferi",
    "anter",
    "sept",
    "lateral",
    "posterior",
    "subendocard",
    "injury",
    "necro",
    "nekro",
    "a-v",
    "av-",
    "wpw",
    "pre-excit",
    "präexz",
)
MASK_WORDS: tuple[str, ...] = (
    "q",
    "qs",
    "st",
    "t",
    "lvh",
    "rvh",
    "lao",
    "rao",
    "lae",
    "rae",
    "lafb",
    "lpfb",
    "crbbb",
    "clbbb",
    "irbbb",
    "ilbbb",
    "ivcd",
    "1avb",
    "2avb",
    "3avb",
    "imi",
    "asmi",
    "ami",
    "almi",
    "ilmi",
    "ipmi",
    "lmi",
    "pmi",
    "ndt",
    "nst",
    "isc",
    "old",
    "alt",
    "äldre",
    "gammal",
    "färsk",
    "recent",
    "lv",
    "rv",
    "nst_",
)
_WORD = re.compile(r"\w+(?:[-'’]\w+)*")


class PTBXLOptions(Strict):
    """Options of ``ptbxl``: ``verify``: ``"csv"`` (default: SHA-256 of both CSVs, every
    waveform file present) or ``"all"`` (SHA-256 of every waveform file too);
    ``no_diagnostic``: ``"exclude"`` or ``"keep"`` (all-zero labels); ``report_mask``: mask the
    report's diagnostic words; ``ecg_recipe``: the ECG preprocessing the schema asks for,
    ``"full"`` (default: the whole 10 s, per-lead standardisation fitted on train) or
    ``"reference"`` (Strodthoff et al. 2021: random 2.5 s training crops, the mean over
    half-overlapping 2.5 s windows at test, one scaler over every lead fitted on train; see
    :data:`REFERENCE_ECG`)."""

    verify: str = "csv"
    no_diagnostic: str = "exclude"
    report_mask: bool = False
    ecg_recipe: Literal["full", "reference"] = "full"


class PTBXL(BuiltinDataset):
    info = DatasetInfo(
        name="ptbxl",
        title="PTB-XL 12-lead ECG + report + demographics (the records in the folder)",
        task="multilabel",
        modalities={
            "ecg": "signal, 12 leads (I, II, III, aVR, aVL, aVF, V1-V6), 100 Hz, 1000 samples (10 s)",
            "report": "text, the cardiologist's free-text report (German/English/Swedish); it "
            "states the diagnosis, so a text model reads the cardiologist's words",
            "demo": "tabular: age (capped at 90), sex, height, weight (missing -> imputed + indicator)",
        },
        size="every record of ptbxl_database.csv: 8,976 records of 8,042 patients (ecg_id < 9000; "
        "8,856 with a diagnostic statement) in the shared folder, 1,987 of 1,850 in the packaged "
        "subset (ecg_id < 2000; 1,965); train folds 1-8 / val 9 / test 10",
        source=SOURCE,
        citation=CITATION,
        licence="CC BY 4.0",
        pairing="real patient pairing: ECG, report and demographics of the same record",
        notes="Target: diagnostic superclasses NORM/MI/STTC/CD/HYP (multilabel, at any likelihood). "
        "Records without a diagnostic statement are excluded by default (Strodthoff et al. "
        "2021). Signal files are named by each record's header (WFDB format 16, or FLAC format "
        "516 with two files). Full-release benchmark (21,799 records): macro-AUROC ~0.93 (Strodthoff et al. "
        "2021), not directly comparable with this subset.",
    )

    def locate(self, data_dir: Path | None) -> Path:
        if data_dir is None:
            raise DatasetError(
                "ptbxl: no data directory; pass --data-dir or set $MEDMODAL_DATA_DIR to the folder "
                f"holding ptbxl/ (the files come from {SOURCE})"
            )
        data_dir = Path(data_dir)
        for folder in (data_dir / "ptbxl", data_dir):
            if (folder / DATABASE).is_file():
                return folder
        return data_dir / "ptbxl"

    def write(self, out_dir: Path, data_dir: Path | None, options: PTBXLOptions) -> Prepared:
        """Write ``manifest.csv`` + ``schema.yaml`` (+ ``excluded.csv``) into ``out_dir``: check
        the options, read and verify the files, label, write (see :class:`PTBXLOptions`)."""
        o = options
        if o.verify not in ("csv", "all"):
            raise DatasetError(f"ptbxl: verify must be 'csv' or 'all', not {o.verify!r}")
        if o.no_diagnostic not in ("exclude", "keep"):
            raise DatasetError(
                f"ptbxl: no_diagnostic must be 'exclude' or 'keep', not {o.no_diagnostic!r}"
            )
        folder = self.locate(data_dir)
        db, classes_of, database_check = read_verified(folder, o.verify == "all")
        labels = superclass_labels(db, classes_of, folder / DATABASE)
        frame = _manifest(db, labels, folder)
        check_patient_splits(frame)
        out_dir.mkdir(parents=True, exist_ok=True)
        kept, excluded, no_diag = split_no_diagnostic(frame, o.no_diagnostic, out_dir)
        manifest = out_dir / "manifest.csv"
        kept.to_csv(manifest, index=False)
        mask_terms = report_mask_terms(db["report"], classes_of) if o.report_mask else []
        schema_path = out_dir / "schema.yaml"
        build_schema(mask_terms, ECG_RECIPES[o.ecg_recipe]).save(schema_path)
        facts = {
            **prepared_facts(db, frame, kept, no_diag, excluded, o.no_diagnostic),
            "report_mask_terms": len(mask_terms),
            "verified": "csv digests + waveform presence" if o.verify == "csv" else "all digests",
            "metadata_verified_by": database_check,
            "ecg_recipe": o.ecg_recipe,
            "source": SOURCE,
            "pairing": self.info.pairing,
        }
        return Prepared(manifest, schema_path, facts)


def read_verified(folder: Path, digests: bool) -> tuple[pd.DataFrame, dict[str, str], str]:
    """The database (verified: see :func:`verify_database`), SCP code -> superclass, and how the
    database was verified; every record's header and signal files checked (``digests``: their
    SHA-256 too)."""
    sums = load_checksums()
    require_file(folder / STATEMENTS, "ptbxl", SOURCE, sums[STATEMENTS], "sha256")
    listed = folder_checksums(folder)
    database_check = verify_database(folder, sums, listed)
    sums = {**listed, **sums}  # PhysioNet's values win where both list one
    db = _read_csv(folder / DATABASE)
    classes_of = diagnostic_classes(_read_csv(folder / STATEMENTS, index_col=0))
    verify_waveforms(folder, db, sums, digests=digests)
    return db, classes_of, database_check


def split_no_diagnostic(
    frame: pd.DataFrame, no_diagnostic: str, out_dir: Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows kept (without the records with no diagnostic statement unless ``"keep"``), the
    rows excluded (also written to ``excluded.csv``) and the records with no diagnostic one."""
    no_diag = frame[frame[list(SUPERCLASSES)].sum(axis=1) == 0]
    excluded = pd.DataFrame(
        {
            "sample_id": no_diag["sample_id"],
            "reason": "no diagnostic SCP statement (diagnostic == 1)",
        }
    )
    excluded.to_csv(out_dir / "excluded.csv", index=False)
    if no_diagnostic == "exclude":
        return frame.drop(index=no_diag.index).reset_index(drop=True), excluded, no_diag
    return frame, excluded.iloc[0:0], no_diag


def prepared_facts(
    db: pd.DataFrame,
    frame: pd.DataFrame,
    kept: pd.DataFrame,
    no_diag: pd.DataFrame,
    excluded: pd.DataFrame,
    no_diagnostic: str,
) -> dict[str, Any]:
    """Rows, records, patients, superclass and split counts, exclusions, capped ages."""
    return {
        "rows": len(kept),
        "records": len(db),
        "patients": int(kept["patient_id"].nunique()),
        "superclass_counts_all_records": {c: int(frame[c].sum()) for c in SUPERCLASSES},
        "superclass_counts": {c: int(kept[c].sum()) for c in SUPERCLASSES},
        "no_diagnostic_statement": list(no_diag["sample_id"]),
        "no_diagnostic": no_diagnostic,
        "excluded": list(excluded["sample_id"]),
        "split_counts": {k: int(v) for k, v in kept["split"].value_counts().items()},
        "ages_capped": int((db["age"] > AGE_CAP - 1).sum()),
        # e.g. ecg_id 443's report is a single space: the report modality is absent there
        "reports_without_words": list(
            kept.loc[~kept["report"].fillna("").str.contains(r"\w"), "sample_id"]
        ),
    }


# -- checks ---------------------------------------------------------------------------------
def load_checksums() -> dict[str, str]:
    """PhysioNet's SHA-256 values of the subset's files (relative path -> digest)."""
    text = resources.files("medmodal.datasets").joinpath("checksums", CHECKSUMS).read_text()
    return _parse_sums(text)


def _parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (``DIGEST  name`` or ``DIGEST *name``) -> {name: digest}."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def folder_checksums(folder: Path) -> dict[str, str]:
    """The folder's own ``SHA256SUMS.txt`` (relative path -> digest; empty when absent): the
    digests of files the package does not know, e.g. records added to the folder later."""
    path = folder / FOLDER_SUMS
    if not path.is_file():
        return {}
    return _parse_sums(path.read_text())


def verify_database(folder: Path, sums: dict[str, str], listed: dict[str, str]) -> str:
    """Check ``ptbxl_database.csv`` and say how: its digest is the packaged subset's (``sums``),
    or (a folder holding other records) the folder's ``SHA256SUMS.txt`` (``listed``) lists it
    and every line of it is a line of ``ptbxl_database_full.csv`` (PhysioNet's whole v1.0.1
    metadata, also listed) with the same header. Anything else is a DatasetError naming the file."""
    path = require_file(folder / DATABASE, "ptbxl", SOURCE)
    got = file_digest(path, "sha256")
    if got == sums[DATABASE]:
        return "package checksum (the 1,987-record subset)"
    full = folder / FULL_DATABASE
    if listed.get(DATABASE) != got:
        raise DatasetError(
            f"ptbxl: file {path} is altered or incomplete (sha256 {got}, expected "
            f"{sums[DATABASE]} for the packaged subset, or the value in {folder / FOLDER_SUMS} "
            f"for another one). Fetch it again from {SOURCE}."
        )
    if FULL_DATABASE not in listed:
        raise DatasetError(
            f"ptbxl: {path} is not the packaged subset, and {folder / FOLDER_SUMS} does not list "
            f"{FULL_DATABASE}, against whose rows it is checked ({SOURCE})"
        )
    require_file(full, "ptbxl", SOURCE, listed[FULL_DATABASE], "sha256")
    lines, full_lines = path.read_bytes().splitlines(), full.read_bytes().splitlines()
    known = set(full_lines)
    if lines[:1] != full_lines[:1]:
        raise DatasetError(f"ptbxl: {path} does not have the columns of {full}")
    foreign = [
        line.split(b",", 1)[0].decode(errors="replace") for line in lines if line not in known
    ]
    if foreign:
        raise DatasetError(
            f"ptbxl: {len(foreign)} row(s) of {path} are not rows of {full} (ecg_id "
            f"{', '.join(foreign[:5])}); the rows must be PhysioNet's unchanged ({SOURCE})"
        )
    return f"{FOLDER_SUMS} + every row found in {FULL_DATABASE}"


def verify_waveforms(folder: Path, db: pd.DataFrame, sums: dict[str, str], digests: bool) -> None:
    """Every record's header and the signal files it names exist and are listed (with
    ``digests``, match their SHA-256: PhysioNet's from the package, else the folder's
    ``SHA256SUMS.txt``). File names come from each header: a record in WFDB's FLAC format 516
    has two signal files (``NNNNN_lr_1.dat``, ``NNNNN_lr_2.dat``), a format-16 one has one."""
    for ref in db["filename_lr"]:
        hea = _require_listed(folder, f"{ref}.hea", sums, digests)
        try:
            names = wfdb_signal_files(hea)
        except DataError as exc:
            raise DatasetError(f"ptbxl: {exc} (the files come from {SOURCE})") from None
        parent = Path(str(ref)).parent
        for name in names:
            _require_listed(folder, (parent / name).as_posix(), sums, digests)


def _require_listed(folder: Path, name: str, sums: dict[str, str], digest: bool) -> Path:
    """``folder / name``, which must have a checksum and exist (and match it with ``digest``)."""
    if name not in sums:
        raise DatasetError(
            f"ptbxl: {folder / DATABASE} lists a record with {name}, which has no checksum "
            f"(neither in the package nor in {folder / FOLDER_SUMS}); the files come from {SOURCE}"
        )
    return require_file(folder / name, "ptbxl", SOURCE, sums[name] if digest else None, "sha256")


def check_patient_splits(frame: pd.DataFrame) -> None:
    """DatasetError when a patient has records in two splits (strat_fold is per patient)."""
    n = frame.groupby("patient_id")["split"].nunique()
    bad = n[n > 1]
    if len(bad):
        raise DatasetError(
            f"ptbxl: patient(s) {list(bad.index[:5])} have records in several splits; strat_fold "
            f"should be per patient ({SOURCE})"
        )


# -- labels -----------------------------------------------------------------------------------
def diagnostic_classes(statements: pd.DataFrame) -> dict[str, str]:
    """SCP code -> diagnostic superclass, for statements with ``diagnostic == 1``."""
    diag = statements[statements["diagnostic"] == 1]
    out = {str(code): str(cls) for code, cls in diag["diagnostic_class"].items()}
    unknown = sorted(set(out.values()) - set(SUPERCLASSES))
    if unknown:
        raise DatasetError(f"ptbxl: {STATEMENTS} has unknown diagnostic classes {unknown}")
    return out


def superclass_labels(db: pd.DataFrame, classes_of: dict[str, str], path: Path) -> pd.DataFrame:
    """0/1 frame (one column per superclass) from each record's ``scp_codes``."""
    rows = []
    for ecg_id, cell in zip(db["ecg_id"], db["scp_codes"], strict=True):
        try:
            codes = ast.literal_eval(str(cell))
            if not isinstance(codes, dict):
                raise ValueError("not a mapping")
        except (ValueError, SyntaxError) as exc:
            raise DatasetError(
                f"ptbxl: {path}: ecg_id {ecg_id}: unreadable scp_codes {cell!r} ({exc})"
            ) from None
        found = {classes_of[c] for c in codes if c in classes_of}
        rows.append({c: int(c in found) for c in SUPERCLASSES})
    return pd.DataFrame(rows, index=db.index)


# -- manifest + schema ---------------------------------------------------------------------
def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"ptbxl: cannot read {path}: {exc}") from None


def _manifest(db: pd.DataFrame, labels: pd.DataFrame, folder: Path) -> pd.DataFrame:
    folds = pd.to_numeric(db["strat_fold"], errors="coerce")
    bad = db.loc[~folds.isin(list(SPLIT_OF_FOLD)), "ecg_id"]
    if len(bad):
        raise DatasetError(
            f"ptbxl: {folder / DATABASE}: ecg_id {list(bad[:5])} have no strat_fold in 1-10"
        )
    frame = pd.DataFrame(
        {
            "sample_id": [f"ptbxl_{int(i):05d}" for i in db["ecg_id"]],
            "patient_id": [f"p{int(p)}" for p in db["patient_id"]],
            "split": [SPLIT_OF_FOLD[int(f)] for f in folds],
            "strat_fold": folds.astype(int),
        }
    )
    frame = pd.concat([frame, labels.reset_index(drop=True)], axis=1)
    frame["ecg"] = [str(folder / ref) for ref in db["filename_lr"]]
    frame["report"] = db["report"].to_numpy()
    frame["age"] = db["age"].clip(upper=AGE_CAP).to_numpy()
    frame["sex"] = db["sex"].map({0: "male", 1: "female"}).to_numpy()
    frame["height"] = db["height"].to_numpy()
    frame["weight"] = db["weight"].to_numpy()
    frame["scp_codes"] = db["scp_codes"].to_numpy()
    return frame


def build_schema(mask_terms: list[str] | None = None, ecg: dict[str, Any] | None = None) -> Schema:
    """The schema: ``ecg`` holds the ECG's preprocessing beyond rate and length (default:
    :data:`FULL_ECG`)."""
    report_pre: dict[str, Any] = {
        "tokenizer": "word",
        "source": "inline",
        "max_len": 64,
        "min_freq": 2,
    }
    if mask_terms:
        report_pre["mask_terms"] = list(mask_terms)
    return Schema.load(
        {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "split_column": "split",
            "target": {"task": "multilabel", "columns": list(SUPERCLASSES)},
            "modalities": {
                "ecg": {
                    "type": "signal",
                    "column": "ecg",
                    "allow_missing": False,
                    "preprocess": {
                        "fs": 100,
                        "length": 1000,
                        "length_policy": "error",
                        **(FULL_ECG if ecg is None else ecg),
                    },
                },
                "report": {"type": "text", "column": "report", "preprocess": report_pre},
                "demo": {
                    "type": "tabular",
                    "columns": [*DEMO_NUMERIC, "sex"],
                    "categorical": ["sex"],
                },
            },
            "subgroups": {k: dict(v) for k, v in SUBGROUPS.items()},
        }
    )


def report_mask_terms(reports: pd.Series, classes_of: dict[str, str]) -> list[str]:
    """The report words to mask: those containing a stem of :data:`MASK_STEMS`, equal to one of
    :data:`MASK_WORDS` or to a diagnostic SCP code (lower case)."""
    exact = {w.lower() for w in MASK_WORDS} | {c.lower() for c in classes_of}
    vocab = {
        w
        for r in reports.dropna()
        for w in _WORD.findall(unicodedata.normalize("NFKC", str(r)).lower())
    }
    return sorted(w for w in vocab if w in exact or any(s in w for s in MASK_STEMS))


DATASETS.register("ptbxl", options=PTBXLOptions)(PTBXL)
