"""COVID-19 image data collection (Cohen et al.), chest X-ray subset: image + note + record.

Three modalities per row (one film): ``image`` (the grayscale PNG), ``note`` (the row's
``clinical_notes``; empty -> absent, counted) and ``record`` (age, sex, temperature,
pO2 saturation, leukocyte / neutrophil / lymphocyte counts, view, offset; imputation and
missing indicators come from the tabular processor). Two targets:

* ``finding``: COVID-19 (also "COVID-19, ARDS") vs every other finding; ``todo`` rows
  (radiopaedia scrapes with no diagnosis) are left out.
* ``survival``: died (``survival == N``, the positive class) vs survived (``Y``); rows with an
  empty or ``?`` survival are left out.

Pitfalls handled here (see the data folder's SOURCES.md): the same person listed under two
patient ids. Ids are merged (union-find, :func:`merged_patients`) when they share a
byte-identical image (sha256 of the PNG: the 5 files of Eurorad cases 10483 = patients
285 + 339 and 10665 = 287 + 340, and two different file names with identical bytes,
SIRM cases 54 and 72 = 78 + 201) or one of the films of :data:`SAME_FILMS` (the same X-ray
re-encoded, re-cropped or captioned upstream, found by the leakage audit's perceptual hash
and checked by eye and against the notes: 97 + 178, 137 + 202, 192 + 196). Several films
per patient (``patient_id`` groups them), placeholders (``?``, "Not visible", "Would have
been stated") -> missing. Label leakage through the notes is *not* removed by default: ``mask_notes=True``
replaces the words of :data:`MASK_TERMS` by ``[MASK]`` (``mask_numbers=True`` also masks
numbers: ages, dates, doses).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from medmodal.data.preprocess.tabular import DEFAULT_NA_VALUES
from medmodal.data.schema import Schema
from medmodal.datasets.base import DATASETS, BuiltinDataset, DatasetInfo, Prepared, require_file
from medmodal.errors import DatasetError
from medmodal.options import Strict

NAME = "covid_cxr"
FOLDER = "covid_cxr"
UPSTREAM = "ieee8023/covid-chestxray-dataset"
SOURCE = (
    "Cohen et al., COVID-19 image data collection, https://github.com/ieee8023/covid-chestxray-dataset "
    "(copy used: fork hida6/covid-chestxray-dataset at commit 584034aa7fbf06496741f11008d72fd791c8e443; "
    "X-ray rows, images converted to 8-bit grayscale PNG, longer side 256 px, as described in the data "
    "folder's SOURCES.md)"
)
CITATION = (
    "Cohen J.P., Morrison P., Dao L., Roth K., Duong T.Q., Ghassemi M. COVID-19 Image Data Collection: "
    "Prospective Predictions Are the Future. arXiv:2006.11988 (2020)."
)
LICENCE = (
    "per image: the `license` column of metadata.csv (CC BY-NC-SA, CC BY 3.0/4.0, ...; 225 rows "
    "empty); metadata.csv CC BY-NC-SA 4.0 (non-commercial). Use for research only; do not re-host."
)
# sha256 of the 621-row metadata.csv (29 upstream columns + `png`).
METADATA_SHA256 = "a8875c74c48104f458f3daafc34096bcafbeec0169543a64e89be1d93695290f"
# sha256 over "<name>\0<sha256 of the file>\n" for the 616 PNGs, sorted by name (see images_digest).
IMAGES_SHA256 = "b8268e9670fda83111f1612b2f8fb39f85857d16245bcdbdce86c6bc7b1a3643"
N_ROWS, N_IMAGES = 621, 616

# The same film under two patient ids without identical bytes (one pair per person; `medmodal audit`
# lists them as near-identical images, 256-bit pHash distance in brackets). Each was checked by eye
# and the notes agree (age, sex, history):
SAME_FILMS: tuple[tuple[str, str], ...] = (
    # Radiopaedia "rapidly progressive ARDS" (97) = Eurorad 16660 (178), 70-72 y woman, Valencia:
    # 4 films, pHash 0-2.
    (
        "covid-19-rapidly-progressive-acute-respiratory-distress-syndrome-ards-admission.png",
        "16660_2_1.png",
    ),
    # SIRM case 67 (137) = case 76 (202), 83 y man; case 76's note quotes case 67's report (pHash 22).
    ("A7E260CE-8A00-4C5F-A7F5-27336527A981.png", "case_76_1-3.png"),
    # radiologyassistant.nl, 73 y man with a pacemaker: admission film (192) = "day 1" (196), recropped
    # and captioned (pHash 44).
    ("AR-1.png", "extubation-1.png"),
)

TARGETS = ("finding", "survival")
CLASSES = {"finding": ["other", "COVID-19"], "survival": ["survived", "died"]}
PLACEHOLDERS = ("?", "Not visible", "Would have been stated")
NUMERIC = [
    "age",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "offset",
]
CATEGORICAL = ["sex", "view"]
SUBGROUPS = {"sex": {"column": "sex"}, "age": {"column": "age", "bins": [40, 60, 80]}}  # report
# Kept in the manifest for inspection (not model inputs): they carry source / date / outcome.
INFO_COLUMNS = ["finding", "survival", "date", "year", "location", "url", "doi", "license", "png"]

# Diagnosis, pathogen, test, epidemiological-context and outcome words hidden by mask_notes=True.
# Inside a term, spaces / hyphens match any run of them or none ("covid-19" also hides "COVID 19",
# "covid19"); matching is case-insensitive on word boundaries (the text processor's mask_terms).
# Deliberately not masked: generic findings ("pneumonia", "consolidation", "opacity") that every
# class shares, and dates / places other than the few below (use mask_numbers for dates).
MASK_TERMS: dict[str, list[str]] = {
    "covid": [
        "covid",
        "covid-19",
        "covid-2019",
        "sars-cov-2",
        "sars-cov",
        "coronavirus",
        "corona virus",
        "corona",
        "2019-ncov",
        "ncov",
        "novel coronavirus",
        "cov",
    ],
    "other findings": [
        "sars",
        "mers",
        "ards",
        "pneumocystis",
        "pcp",
        "pjp",
        "jirovecii",
        "carinii",
        "legionella",
        "legionnaire",
        "legionnaires",
        "streptococcus",
        "streptococcal",
        "pneumococcus",
        "pneumococcal",
        "klebsiella",
        "mycoplasma",
        "e. coli",
        "e.coli",
        "escherichia",
        "influenza",
        "flu",
        "h1n1",
        "varicella",
        "chickenpox",
        "chicken pox",
        "zoster",
        "tuberculosis",
        "tb",
        "lipoid",
        "bacterial",
        "bacteria",
        "viral",
        "virus",
        "fungal",
    ],
    "tests": ["pcr", "rt-pcr", "swab", "nasopharyngeal swab"],
    "epidemiology": [
        "wuhan",
        "hubei",
        "huanan",
        "seafood market",
        "seafood",
        "pandemic",
        "epidemic",
        "outbreak",
        "quarantine",
        "quarantined",
    ],
    "outcome": [
        "died",
        "die",
        "dies",
        "dying",
        "death",
        "dead",
        "deceased",
        "expired",
        "passed away",
        "succumbed",
        "fatal",
        "mortality",
        "survived",
        "survive",
        "survival",
        "survivor",
        "discharged",
        "discharge",
        "recovered",
        "recovery",
        "intubated",
        "intubation",
        "extubated",
        "extubation",
        "ventilated",
        "ventilation",
        "mechanical ventilation",
        "ventilator",
        "icu",
        "intensive care",
        "intensive care unit",
        "ecmo",
    ],
}


def mask_terms() -> list[str]:
    """All terms of :data:`MASK_TERMS`, de-duplicated, in a stable order."""
    return list(dict.fromkeys(t for terms in MASK_TERMS.values() for t in terms))


def image_digests(folder: Path) -> dict[str, str]:
    """sha256 of every PNG in ``folder``, by file name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))
    }


def images_digest(folder: Path, digests: Mapping[str, str] | None = None) -> str:
    """sha256 over the names and sha256 digests of the PNGs in ``folder`` (sorted by name)."""
    digests = image_digests(folder) if digests is None else digests
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode() + b"\0" + digests[name].encode() + b"\n")
    return h.hexdigest()


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata.csv as text (empty cells NaN), placeholders -> NaN, checked for the needed columns."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    need = [
        "patientid",
        "finding",
        "survival",
        "clinical_notes",
        "filename",
        "png",
        *NUMERIC,
        *CATEGORICAL,
    ]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DatasetError(f"{NAME}: {path} lacks column(s) {missing}; it comes from {SOURCE}")
    placeholders = {p.casefold() for p in PLACEHOLDERS}
    for c in df.columns:
        s = df[c]
        hit = s.notna() & s.astype(str).str.strip().str.casefold().isin(placeholders)
        df.loc[hit, c] = pd.NA
    return df


def merged_patients(df: pd.DataFrame, digests: Mapping[str, str] | None = None) -> pd.Series:
    """Patient id per row; ids that share an image are merged ("285+339").

    Two rows share an image when their PNGs have the same sha256 (``digests``: PNG name ->
    digest, from :func:`image_digests`; a PNG without a digest is keyed by its name) or
    when they hold the two films of a :data:`SAME_FILMS` pair.
    """
    parent: dict[str, str] = {p: p for p in df["patientid"].astype(str)}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    digests = digests or {}
    image = df["png"].astype(str).map(lambda n: digests.get(n, n))
    same = {
        digests.get(b, b): digests.get(a, a) for a, b in SAME_FILMS
    }  # 2nd film counts as the 1st
    for _, ids in df["patientid"].astype(str).groupby(image.map(lambda k: same.get(k, k))):
        first, *rest = ids.unique()
        for other in rest:
            a, b = find(first), find(other)
            if a != b:
                parent[max(a, b, key=_id_key)] = min(a, b, key=_id_key)
    groups: dict[str, list[str]] = {}
    for p in parent:
        groups.setdefault(find(p), []).append(p)
    name = {
        p: "+".join(sorted(members, key=_id_key)) for members in groups.values() for p in members
    }
    return df["patientid"].astype(str).map(name)


def _id_key(p: str) -> tuple[int, str]:
    return (int(p), p) if p.isdigit() else (1 << 30, p)


def _year(date: Any) -> float:
    m = re.search(r"(19|20)\d{2}", str(date)) if isinstance(date, str) else None
    return float(m.group(0)) if m else float("nan")


class CovidOptions(Strict):
    """Options of ``covid_cxr``. ``target``: ``finding`` or ``survival``. ``image_size``: square
    input side (the PNGs are resized to it when read). ``image_augment``: the image processor's
    ``augment``. ``text_tokenizer``: the text processor's tokenizer (``minilm_embed``, ``word``,
    ``wordpiece``). ``mask_notes``: hide :data:`MASK_TERMS` (+ ``extra_mask_terms``) in the
    notes; ``mask_numbers``: hide numbers too. ``on_bad``: ``error`` (a corrupt image stops the
    run, naming the file) or ``missing`` (it becomes an absent, counted image). ``verify``: check
    every image exists, decodes and matches the recorded digest. ``limit``: keep the first N rows
    of the target (quick demos; all files are still verified). ``download`` / ``image_format``
    are the CLI's generic options: there is no download (the files are converted from the
    upstream repository, see SOURCES), images are PNG references."""

    target: str = "finding"
    image_size: int = 64
    image_augment: dict[str, float] | None = None
    text_tokenizer: str = "minilm_embed"
    mask_notes: bool = False
    extra_mask_terms: list[str] | None = None
    mask_numbers: bool = False
    on_bad: str = "error"
    verify: bool = True
    limit: int | None = None
    download: bool = False
    image_format: str | None = None


def check_options(o: CovidOptions) -> None:
    """DatasetError for values the options model cannot refuse on its own."""
    if o.download:
        raise DatasetError(
            f"{NAME}: no download: the PNGs are converted from {SOURCE}; put metadata.csv and "
            f"images/ in <data dir>/{FOLDER}"
        )
    if o.image_format not in (None, "npz", "png"):
        raise DatasetError(
            f"{NAME}: images are PNG files; image_format {o.image_format!r} is not available"
        )
    if o.target not in TARGETS:
        raise DatasetError(f"{NAME}: target must be one of {list(TARGETS)}, not {o.target!r}")
    if o.on_bad not in ("error", "missing"):
        raise DatasetError(f"{NAME}: on_bad must be 'error' or 'missing', not {o.on_bad!r}")


def read_verified(folder: Path, verify: bool) -> pd.DataFrame:
    """metadata.csv (checked against its digest and row count) with the merged ``patient_id``;
    with ``verify`` every listed image is checked too (see :func:`verify_images`)."""
    meta_path = require_file(folder / "metadata.csv", NAME, SOURCE, METADATA_SHA256, "sha256")
    df = read_metadata(meta_path)
    if len(df) != N_ROWS:
        raise DatasetError(f"{NAME}: {meta_path} has {len(df)} rows, expected {N_ROWS}")
    images = folder / "images"
    digests = verify_images(images, df["png"]) if verify else image_digests(images)
    df["patient_id"] = merged_patients(df, digests)
    return df


class CovidCXR(BuiltinDataset):
    info = DatasetInfo(
        name=NAME,
        title="COVID-19 image data collection (Cohen et al.), chest X-rays + clinical notes + clinical fields",
        task="binary (target=finding: COVID-19 vs other; target=survival: died vs survived)",
        modalities={
            "image": "chest X-ray PNG, 8-bit grayscale, longer side 256 px (resized to image_size)",
            "note": "clinical_notes free text (MiniLM sentence embedding by default); empty -> absent",
            "record": "age, sex, temperature, pO2_saturation, leukocyte/neutrophil/lymphocyte counts, "
            "view, offset (days since symptom onset)",
        },
        size=(
            "621 X-ray rows / 616 images / 338 patient ids (332 people after merging the ids that share "
            "an image); "
            "finding: 543 rows (todo excluded); survival: 233 rows"
        ),
        source=SOURCE,
        citation=CITATION,
        licence=LICENCE,
        pairing="image, note and record of the same film (row); patients have several films",
        notes=(
            "Notes often state the diagnosis or outcome (use mask_notes=True and compare); COVID-19 rows "
            "are mostly 2020 case reports and the others older teaching cases, so source / date "
            "confound every modality, images included. Survival is known for a third of the rows."
        ),
    )

    def locate(self, data_dir: Path | None) -> Path:
        """``data_dir/covid_cxr`` (or ``data_dir`` itself when it holds metadata.csv)."""
        if data_dir is None:
            raise DatasetError(
                f"{NAME}: no data directory; pass --data-dir or set $MEDMODAL_DATA_DIR to the "
                f"folder holding {FOLDER}/ (metadata.csv + images/, from {SOURCE})"
            )
        data_dir = Path(data_dir)
        return data_dir if (data_dir / "metadata.csv").is_file() else data_dir / FOLDER

    def write(self, out_dir: Path, data_dir: Path | None, options: CovidOptions) -> Prepared:
        """Verify the files and write ``manifest.csv`` + ``schema.yaml`` into ``out_dir``
        (see :class:`CovidOptions`)."""
        o = options
        check_options(o)
        folder = self.locate(data_dir)
        df = read_verified(folder, o.verify)
        frame, excluded = select_target(df, o.target)
        if o.limit is not None:
            frame = frame.head(int(o.limit))
        out = manifest_frame(frame, folder / "images")
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = out_dir / "manifest.csv"
        out.to_csv(manifest, index=False)
        schema = Schema.load(
            self.schema_dict(
                o.target, o.image_size, o.image_augment, o.text_tokenizer, o.mask_notes,
                o.extra_mask_terms, o.mask_numbers, o.on_bad,
            )
        )  # fmt: skip
        schema_path = out_dir / "schema.yaml"
        schema.save(schema_path)
        facts = {**prepared_facts(out, o.target, excluded), "folder": str(folder)}
        return Prepared(manifest, schema_path, facts)

    @staticmethod
    def schema_dict(
        target: str,
        image_size: int = 64,
        image_augment: dict[str, float] | None = None,
        text_tokenizer: str = "minilm_embed",
        mask_notes: bool = False,
        extra_mask_terms: list[str] | None = None,
        mask_numbers: bool = False,
        on_bad: str = "error",
    ) -> dict[str, Any]:
        """The schema (as a dict) for one target and set of options."""
        image_pre: dict[str, Any] = {
            "size": [int(image_size)] * 2,
            "channels": 1,
            "normalize": "fit",
        }
        if image_augment:
            image_pre["augment"] = dict(image_augment)
        text_pre: dict[str, Any] = {"tokenizer": text_tokenizer, "source": "inline"}
        terms = (mask_terms() if mask_notes else []) + list(extra_mask_terms or [])
        if terms:
            text_pre["mask_terms"] = terms
        if mask_numbers:
            text_pre["mask_numbers"] = True
        return {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "target": {
                "task": "binary",
                "column": "label",
                "classes": CLASSES[target],
                "positive": CLASSES[target][1],  # COVID-19 / died: the finding looked for
            },
            "modalities": {
                "image": {
                    "type": "image",
                    "column": "image",
                    "allow_missing": False,
                    "on_bad": on_bad,
                    "preprocess": image_pre,
                },
                "note": {
                    "type": "text",
                    "column": "note",
                    "allow_missing": True,
                    "on_bad": on_bad,
                    "preprocess": text_pre,
                },
                "record": {
                    "type": "tabular",
                    "columns": NUMERIC + CATEGORICAL,
                    "categorical": CATEGORICAL,
                    "allow_missing": True,
                    "preprocess": {
                        "na_values": list(dict.fromkeys([*DEFAULT_NA_VALUES, *PLACEHOLDERS]))
                    },
                },
            },
            "subgroups": {k: dict(v) for k, v in SUBGROUPS.items()},
        }


def manifest_frame(frame: pd.DataFrame, images: Path) -> pd.DataFrame:
    """The manifest's columns from the selected metadata rows (``label`` and ``patient_id`` set)."""
    frame = frame.reset_index().rename(columns={"index": "source_row"})
    rows = zip(frame["source_row"], frame["png"], strict=True)
    return pd.DataFrame(
        {
            "sample_id": [f"r{r:03d}_{Path(p).stem}" for r, p in rows],
            "patient_id": frame["patient_id"],
            "source_patientid": frame["patientid"],
            "label": frame["label"],
            "image": [str((images / p).resolve()) for p in frame["png"]],
            "note": frame["clinical_notes"],
            **{c: frame[c] for c in NUMERIC + CATEGORICAL},
            "year": frame["date"].map(_year),
            **{c: frame[c] for c in INFO_COLUMNS if c not in ("year",)},
            "source_row": frame["source_row"],
        }
    )


def prepared_facts(out: pd.DataFrame, target: str, excluded: dict[str, int]) -> dict[str, Any]:
    """What ``prepare`` reports: rows, patients, classes, exclusions, merged patient ids."""
    merged = {p for p in out["patient_id"] if "+" in p}
    per_class = out["label"].value_counts().reindex(CLASSES[target], fill_value=0)
    return {
        "target": target,
        "rows": len(out),
        "patients": int(out["patient_id"].nunique()),
        "per_class": per_class.astype(int).to_dict(),
        "excluded": excluded,
        "merged_patients": sorted(merged, key=lambda p: _id_key(p.split("+")[0])),
        "notes_absent": int(out["note"].fillna("").str.strip().eq("").sum()),
        "metadata_sha256": METADATA_SHA256,
    }


def select_target(df: pd.DataFrame, target: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with a usable label and their ``label`` column; counts of the rows left out, by reason."""
    if target == "finding":
        finding = df["finding"].fillna("").str.strip()
        todo = finding.str.casefold().eq("todo")
        empty = finding.eq("")
        keep = ~todo & ~empty
        covid = finding.str.split(",").map(
            lambda parts: any(p.strip().casefold() == "covid-19" for p in parts)
        )
        out = df[keep].copy()
        out["label"] = covid[keep].map({True: "COVID-19", False: "other"})
        return out, {"todo": int(todo.sum()), "no finding value": int(empty.sum())}
    survival = df["survival"].fillna("").str.strip().str.upper()
    keep = survival.isin(["Y", "N"])
    out = df[keep].copy()
    out["label"] = survival[keep].map({"Y": "survived", "N": "died"})
    return out, {"survival empty or placeholder (?)": int((~keep).sum())}


def verify_images(folder: Path, names: pd.Series) -> dict[str, str]:
    """Every listed PNG exists and decodes, and the folder matches the recorded digest;
    returns each PNG's sha256 (see :func:`image_digests`)."""
    from PIL import Image, UnidentifiedImageError

    wanted = sorted({str(n) for n in names.dropna()})
    if len(wanted) != N_IMAGES or names.isna().any():
        raise DatasetError(
            f"{NAME}: metadata.csv lists {len(wanted)} images (expected {N_IMAGES}); "
            f"fetch it again from {SOURCE}"
        )
    for n in wanted:
        path = folder / n
        if not path.is_file():
            raise DatasetError(
                f"{NAME}: image {path} is missing. It comes from {SOURCE}; licence: {LICENCE}"
            )
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DatasetError(
                f"{NAME}: image {path} does not decode ({exc}); fetch it again from {SOURCE}"
            ) from None
    digests = image_digests(folder)
    got = images_digest(folder, digests)
    if got != IMAGES_SHA256:
        present = {p.name for p in folder.glob("*.png")}
        extra = sorted(present - set(wanted))
        raise DatasetError(
            f"{NAME}: the PNGs in {folder} differ from the recorded set (sha256 {got}, expected {IMAGES_SHA256})"
            + (f"; unexpected files: {extra[:5]}" if extra else "; at least one image was altered")
            + f". Fetch them again from {SOURCE}"
        )
    return digests


DATASETS.register(NAME, options=CovidOptions)(CovidCXR)
