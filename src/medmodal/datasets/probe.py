"""Fusion probe: a **synthetic** image + text + audio + tabular data set for testing fusion mechanics.

Nothing here is clinical data and no result on it is a clinical result: the probe exists to check
that the multimodal machinery (readers, processors, encoders, missing-modality masks, fusions,
test-time modality removal) behaves as designed, on real files in real formats.

Generative model (deterministic given ``seed``):

* four latent scores per case, ``z = (z_image, z_text, z_audio, z_tabular) ~ N(0, I)``;
* label ``positive`` iff ``sum(z) > 0``, so every modality is needed and none is enough;
* each modality renders only its own latent, observed with noise: ``o_m = z_m + noise * e_m``;

  - image: 8-bit grayscale PNG, a Gaussian blob at a random position whose peak brightness and
    width grow with ``o_image``, on a noisy background;
  - text: a note whose four severity words (``absent`` ... ``severe``, one per sentence, each from
    ``o_text`` plus word-level noise) encode ``o_text``, shuffled among distractor sentences;
  - audio: 16-bit WAV, a tone (random carrier 400-480 Hz) with a random slow amplitude
    modulation, whose loudness (6 dB per unit) encodes ``o_audio``, over white noise;
  - tabular: ``marker = 50 + 10 * o_tabular`` and irrelevant ``age`` (5 % empty), ``bmi``, ``site``.

* a ``missing`` fraction of cases lacks exactly one modality (empty cells, no file written).

With ``noise = 0.3`` the latent-level reference AUROCs are about 0.72 for one modality, 0.90 for
three and 0.97 for all four (``facts["reference_auroc"]``, computed on the generated ``o``; the
rendering loses a little more). ``latents.csv`` (beside the manifest, never in it) holds ``z`` and
``o`` for analysis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from medmodal.data.schema import Schema
from medmodal.datasets.base import DATASETS, BuiltinDataset, DatasetInfo, Prepared
from medmodal.errors import DatasetError
from medmodal.options import Strict

MODALITIES = ("image", "text", "audio", "tabular")
CLASSES = ["negative", "positive"]
VERSION = 5
SYNTHETIC_NOTE = (
    "SYNTHETIC data for testing fusion mechanics: not clinical data, not a clinical result."
)

TIERS = ("absent", "minimal", "faint", "mild", "moderate", "marked", "severe")
TIER_EDGES = np.array([-1.5, -0.9, -0.3, 0.3, 0.9, 1.5])
NOUNS = ("opacity", "effusion", "murmur", "oedema", "thickening", "congestion")
DISTRACTORS = (
    "patient seen in the outpatient clinic today.",
    "no known drug allergies.",
    "history of hypertension, on treatment.",
    "follow-up visit planned in two weeks.",
    "vital signs recorded by the nurse.",
    "lives with family, independent at home.",
    "former smoker, quit ten years ago.",
    "routine bloods were sent to the laboratory.",
    "discussed the plan with the patient.",
    "previous imaging reviewed for comparison.",
)
SITES = ("north", "south", "east")


class ProbeOptions(Strict):
    """Options of ``fusion_probe`` (see the module doc): ``n`` cases, ``seed``, ``noise``,
    ``missing`` (fraction of cases lacking one modality), ``image_size``, ``sample_rate``,
    ``duration``, ``text_source`` (``file`` | ``inline``), ``split`` (train/val/test fractions,
    stratified), ``augment`` (schema augmentations of nuisance factors), ``limit`` (first N
    cases per split)."""

    n: int = 1000
    seed: int = 0
    noise: float = 0.3
    missing: float = 0.1
    image_size: int = 28
    sample_rate: int = 4000
    duration: float = 0.5
    text_source: Literal["file", "inline"] = "file"
    split: list[float] = [0.6, 0.15, 0.25]
    augment: bool = True
    limit: int | None = None


DEFAULTS: dict[str, Any] = ProbeOptions().model_dump()

# Small encoders that train in seconds on the probe (for tests and the missing-modality benchmark).
SMALL_ENCODERS: dict[str, dict[str, Any]] = {
    "image": {"name": "baseline_cnn", "hidden": 32, "filters": 8},
    "text": {"name": "bigru", "embed_dim": 16, "hidden": 16, "dropout": 0.0},
    "audio": {"name": "audio_cnn", "channels": [8, 16, 32], "dropout": 0.0},
    "tabular": {"name": "mlp", "hidden": [32], "dropout": 0.0},
}
# Fusion width of the probe recipe (fusions without a width option take none).
PROBE_FUSION_KW: dict[str, dict[str, Any]] = {
    n: {"dim": 32} for n in ("concat", "mean", "sum", "attention", "gated")
}


def probe_config(
    prepared: Prepared,
    output_dir: str | Path,
    modalities: Sequence[str] = MODALITIES,
    fusion: str = "concat",
    seed: int = 0,
    *,
    dropout: float = 0.0,
    epochs: int = 12,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """The probe's training recipe as a config dict (used by its test and its benchmark).

    Small encoders (``SMALL_ENCODERS``), fusion width 32, ``dropout`` = modality dropout, Adam
    lr 3e-3, batch 32, weight decay 1e-4, cosine schedule, best epoch by validation AUROC (the
    default monitor); ``bootstrap`` resamples for the test CIs (0: none); no HTML report.
    """
    out = Path(output_dir)
    return {
        "name": out.name,
        "seed": seed,
        "output_dir": str(out),
        "data": {
            "manifest": str(prepared.manifest),
            "schema": str(prepared.schema),
            "modalities": list(modalities),
        },
        "model": {
            "encoders": {m: SMALL_ENCODERS[m] for m in modalities},
            "fusion": {"name": fusion, **PROBE_FUSION_KW.get(fusion, {})},
            "modality_dropout": dropout,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
        },
        "evaluate": {"bootstrap": bootstrap, "report": False},
    }


class FusionProbe(BuiltinDataset):
    info = DatasetInfo(
        name="fusion_probe",
        title="Fusion probe (SYNTHETIC image + text + audio + tabular; mechanics only)",
        task="binary",
        modalities={
            "image": "synthetic 28 px grayscale PNG (blob brightness / width)",
            "text": "synthetic note, .txt file or inline (severity words among distractors)",
            "audio": "synthetic 0.5 s 4 kHz WAV (loudness of an amplitude-modulated tone)",
            "tabular": "synthetic marker + irrelevant age / bmi / site",
        },
        size="n cases (option, default 1000), one per synthetic patient",
        source="generated by medmodal.datasets.probe (no download)",
        citation="none: synthetic",
        licence="generated data, no restrictions",
        pairing="paired by construction: each modality encodes one of four latents of the same case",
        notes=SYNTHETIC_NOTE + " Label = sum of four latents > 0: each modality alone is "
        "insufficient (reference AUROC ~0.72), all four together determine it (~0.97).",
    )

    def locate(self, data_dir: Path | None) -> Path:
        return Path("synthetic")

    def write(self, out_dir: Path, data_dir: Path | None, options: ProbeOptions) -> Prepared:
        """Write PNG / WAV / .txt files, ``manifest.csv``, ``schema.yaml`` and ``latents.csv``
        (see :class:`ProbeOptions`). A folder already holding the same probe (same options) is
        reused as is."""
        opts = _checked(options)
        stamp = out_dir / "probe.json"
        done = all((out_dir / f).is_file() for f in ("probe.json", "manifest.csv", "schema.yaml"))
        if done:
            try:
                previous = json.loads(stamp.read_text())
            except (OSError, ValueError):
                previous = None
            if previous and previous.get("options") == opts and previous.get("version") == VERSION:
                return Prepared(
                    out_dir / "manifest.csv", out_dir / "schema.yaml", previous["facts"]
                )
        stamp.unlink(missing_ok=True)
        return _generate(out_dir, opts)


def _checked(options: ProbeOptions) -> dict[str, Any]:
    """The options as a dict (stored in ``probe.json``); a DatasetError for a value out of range."""
    o = options.model_dump()
    split = o["split"]
    checks = [
        (o["n"] >= 20, "n must be at least 20"),
        (o["noise"] >= 0, "noise must be >= 0"),
        (0 <= o["missing"] < 1, "missing must be in [0, 1)"),
        (o["image_size"] >= 16, "image_size must be at least 16"),
        (o["sample_rate"] >= 2000, "sample_rate must be at least 2000 Hz (carriers up to 480 Hz)"),
        (o["duration"] >= 0.25, "duration must be at least 0.25 s"),
        (
            len(split) == 3 and min(split) >= 0 and split[0] > 0 and abs(sum(split) - 1) < 1e-6,
            "split must be three fractions (train, val, test) summing to 1, train > 0",
        ),
        (o["limit"] is None or o["limit"] >= 1, "limit must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise DatasetError(f"fusion_probe: {msg}")
    return o


@dataclass
class Draw:
    """The generated cases before rendering: latents ``z``, observations ``obs``, labels ``y``,
    the absent modalities, splits, ids, which cases are kept (``limit``) and the random streams."""

    z: np.ndarray
    obs: np.ndarray
    y: np.ndarray
    absent: np.ndarray
    split: np.ndarray
    ids: list[str]
    keep: np.ndarray
    rng: dict[str, np.random.Generator]


def _draw(o: dict[str, Any]) -> Draw:
    """Latents, observations, labels, absent modalities and splits (seeded)."""
    n = o["n"]
    streams = np.random.SeedSequence([o["seed"], 20250613]).spawn(7)
    rng = {
        k: np.random.default_rng(s)
        for k, s in zip(("latent", "missing", "split", *MODALITIES), streams, strict=True)
    }
    z = rng["latent"].standard_normal((n, 4))
    obs = z + o["noise"] * rng["latent"].standard_normal((n, 4))
    y = (z.sum(1) > 0).astype(int)
    absent = np.zeros((n, 4), dtype=bool)
    hit = rng["missing"].random(n) < o["missing"]
    absent[np.flatnonzero(hit), rng["missing"].integers(0, 4, n)[hit]] = True
    split = _stratified_split(y, o["split"], rng["split"])
    ids = [f"probe_{i:05d}" for i in range(n)]
    return Draw(z, obs, y, absent, split, ids, _limit(split, o["limit"]), rng)


def _render(out: Path, o: dict[str, Any], d: Draw) -> pd.DataFrame:
    """Write every kept case's files; its manifest row (an absent modality is an empty cell)."""
    for sub in ("images", "audio", "notes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, sid in enumerate(d.ids):
        # Every modality's randomness is drawn for every case (kept or not) so a case's files do
        # not depend on which other cases are missing or limited away.
        img = _image(d.obs[i, 0], o["image_size"], d.rng["image"])
        note = _note(d.obs[i, 1], d.rng["text"])
        wave = _audio(d.obs[i, 2], o["sample_rate"], o["duration"], d.rng["audio"])
        tab = _tabular(d.obs[i, 3], d.rng["tabular"])
        if not d.keep[i]:
            continue
        absent = d.absent[i]
        row: dict[str, Any] = {
            "sample_id": sid,
            "patient_id": f"patient_{i:05d}",
            "split": d.split[i],
            "label": CLASSES[d.y[i]],
        }
        row["image"] = "" if absent[0] else _write_png(out / "images" / f"{sid}.png", img)
        if absent[1]:
            row["note"] = ""
        elif o["text_source"] == "inline":
            row["note"] = note
        else:
            (out / "notes" / f"{sid}.txt").write_text(note + "\n", encoding="utf-8")
            row["note"] = f"notes/{sid}.txt"
        wav = out / "audio" / f"{sid}.wav"
        row["audio"] = "" if absent[2] else _write_wav(wav, wave, o["sample_rate"])
        row.update({k: (np.nan if absent[3] else v) for k, v in tab.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _generate(out: Path, o: dict[str, Any]) -> Prepared:
    """Draw the cases, render their files, write the manifest, latents, schema and stamp."""
    d = _draw(o)
    _render(out, o, d).to_csv(out / "manifest.csv", index=False)
    lat = pd.DataFrame(
        {
            "sample_id": d.ids,
            **{f"z_{m}": d.z[:, j] for j, m in enumerate(MODALITIES)},
            **{f"o_{m}": d.obs[:, j] for j, m in enumerate(MODALITIES)},
            "label": d.y,
        }
    )
    lat[d.keep].to_csv(out / "latents.csv", index=False)
    Schema.load(_schema(o)).save(out / "schema.yaml")
    keep, y = d.keep, d.y
    facts = {
        "rows": int(keep.sum()),
        "synthetic": SYNTHETIC_NOTE,
        "positives": int(y[keep].sum()),
        "split": {s: int(((d.split == s) & keep).sum()) for s in ("train", "val", "test")},
        "absent": {m: int((d.absent[:, j] & keep).sum()) for j, m in enumerate(MODALITIES)},
        "reference_auroc": reference_auroc(d.obs[keep], y[keep]),
    }
    (out / "probe.json").write_text(
        json.dumps({"version": VERSION, "options": o, "facts": facts}, indent=1)
    )
    return Prepared(out / "manifest.csv", out / "schema.yaml", facts)


def _schema(o: dict[str, Any]) -> dict[str, Any]:
    """Augmentations (``augment``) vary only nuisance factors: blob position/orientation, tone
    timing, single words; never brightness or loudness, which carry the evidence."""
    s = o["image_size"]
    aug = o["augment"]
    schema: dict[str, Any] = {
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "split_column": "split",
        "target": {"task": "binary", "column": "label", "classes": CLASSES},
        "modalities": {
            "image": {
                "type": "image",
                "column": "image",
                "preprocess": {"size": [s, s], "channels": 1},
            },
            "text": {
                "type": "text",
                "column": "note",
                "preprocess": {
                    "tokenizer": "word",
                    "max_len": 48,
                    "min_freq": 2,
                    "source": o["text_source"],
                },
            },
            "audio": {
                "type": "audio",
                "column": "audio",
                "preprocess": {
                    "sample_rate": o["sample_rate"],
                    "duration": o["duration"],
                    "n_fft": 256,
                    "hop_length": 64,
                    "n_mels": 32,
                },
            },
            "tabular": {
                "type": "tabular",
                "columns": ["marker", "age", "bmi", "site"],
                "categorical": ["site"],
            },
        },
    }
    if aug:
        mods = schema["modalities"]
        mods["image"]["preprocess"]["augment"] = {"flip": 0.5, "rotate": 15}
        mods["text"]["preprocess"]["augment"] = {"token_dropout": 0.1}
        mods["audio"]["preprocess"]["augment"] = {"shift": 8}
    return schema


def reference_auroc(obs: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Latent-level reference AUROCs: each noisy latent alone, all four summed, and all but one
    (what an ideal model could reach before the rendering into files loses anything)."""
    out: dict[str, float | None] = {m: _auroc(y, obs[:, j]) for j, m in enumerate(MODALITIES)}
    out["all"] = _auroc(y, obs.sum(1))
    for j, m in enumerate(MODALITIES):
        out[f"all_but_{m}"] = _auroc(y, np.delete(obs, j, axis=1).sum(1))
    return out


def _auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with average ranks for ties (None when one class is absent)."""
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return None
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    ranks = (np.bincount(inv, weights=ranks) / counts)[inv]
    return round(float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)), 4)


def _stratified_split(
    y: np.ndarray, fractions: list[float], rng: np.random.Generator
) -> np.ndarray:
    out = np.empty(len(y), dtype=object)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        out[idx[:n_train]] = "train"
        out[idx[n_train : n_train + n_val]] = "val"
        out[idx[n_train + n_val :]] = "test"
    return out.astype(str)


def _limit(split: np.ndarray, limit: int | None) -> np.ndarray:
    keep = np.ones(len(split), dtype=bool)
    if limit is not None:
        for s in ("train", "val", "test"):
            keep[np.flatnonzero(split == s)[limit:]] = False
    return keep


# -- rendering ------------------------------------------------------------------------------
def _image(o: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size): blob whose peak and width grow with ``o``, random position, noise."""
    c = float(np.clip(o, -2.5, 2.5))
    scale = size / 28
    sigma = scale * (2.6 + 0.55 * c)  # 1.2 .. 4.0 px at 28 px
    peak = 0.5 + 0.14 * c  # 0.15 .. 0.85
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 0.1 + peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    img = img + rng.normal(0.0, 0.04, (size, size))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _note(o: float, rng: np.random.Generator) -> str:
    """Four severity sentences (tier of ``o`` + word noise) shuffled among distractors."""
    nouns = rng.choice(len(NOUNS), 4, replace=False)
    tiers = np.searchsorted(TIER_EDGES, o + rng.normal(0.0, 0.25, 4))
    sentences = [f"{TIERS[t]} {NOUNS[k]} noted." for t, k in zip(tiers, nouns, strict=True)]
    n_dis = int(rng.integers(2, 5))
    sentences += [DISTRACTORS[k] for k in rng.choice(len(DISTRACTORS), n_dis, replace=False)]
    order = rng.permutation(len(sentences))
    text = " ".join(sentences[k] for k in order)
    return text[0].upper() + text[1:]


def _audio(o: float, sr: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """float32 wave: a tone (random carrier and phase) with a slow amplitude modulation (depth 0.4,
    random rate 2-5 Hz and phase), whose loudness is 6 dB per unit of ``o``, plus hiss."""
    c = float(np.clip(o, -2.5, 2.5))
    n = int(round(sr * duration))
    t = np.arange(n) / sr
    carrier = np.sin(2 * np.pi * rng.uniform(400, 480) * t + rng.uniform(0, 2 * np.pi))
    envelope = 1 - 0.4 * (
        0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 2 * np.pi))
    )
    amp = 0.1 * 10 ** (6 * c / 20)  # 0.018 .. 0.56
    hiss = rng.normal(0.0, rng.uniform(0.002, 0.006), n)
    return (amp * envelope * carrier + hiss).astype(np.float32)


def _tabular(o: float, rng: np.random.Generator) -> dict[str, Any]:
    age = float(np.clip(np.round(rng.normal(62, 12)), 18, 95))
    return {
        "marker": round(50 + 10 * float(o), 2),
        "age": np.nan if rng.random() < 0.05 else age,
        "bmi": round(float(rng.normal(27, 4.5)), 1),
        "site": SITES[int(rng.integers(0, len(SITES)))],
    }


def _write_png(path: Path, img: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(img).save(path)
    return f"images/{path.name}"


def _write_wav(path: Path, wave_: np.ndarray, sr: int) -> str:
    """16-bit PCM mono WAV (the standard library writer: ~40x faster than libsndfile here)."""
    import wave

    pcm = np.round(np.clip(wave_, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return f"audio/{path.name}"


DATASETS.register("fusion_probe", options=ProbeOptions)(FusionProbe)
