"""Missing-modality study on the SYNTHETIC fusion probe (mechanics, not a clinical result).

For every registered fusion, with and without modality dropout: test AUROC with all four
modalities (image, text, audio, tabular), AUROC with each modality removed at test time (the
API's ablation table, paired-bootstrap deltas), and AUROC when *any* one modality is missing
(every test row predicted once without each modality, pooled). Baselines: single-modality
models, the probe's latent-level reference AUROCs, and (arm ``logreg``) one logistic regression
on the concatenated observed features of the four files (pixels, word counts, log-mel band means,
table columns; an absent modality = training means + a missing indicator), scored the same way.
Several probe seeds (each its own data, split and training seed); tables give mean +- sd.
The training recipe is ``medmodal.datasets.probe.probe_config`` (shared with the probe's test).

    flock /tmp/medmodal_cpu.lock python benchmarks/missing_modality.py [--n 2000] [--seeds 0 1 2]
    ... python benchmarks/missing_modality.py --arms logreg --merge      # the classical arm only

Writes benchmarks/results/missing_modality.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common as C
import numpy as np
import pandas as pd
import torch

from medmodal import api
from medmodal import run as steps
from medmodal.config import load_config
from medmodal.datasets import get_dataset
from medmodal.datasets.probe import MODALITIES, probe_config
from medmodal.evaluate import compute_metrics
from medmodal.fusion import FUSIONS

NAME = "missing_modality"
CLASSES = ["negative", "positive"]
ARMS = ["single", "fusions", "logreg"]
LOGREG_C = [0.01, 0.1, 1.0]


def any_one_missing(y: np.ndarray, probs: dict[str, np.ndarray]) -> float:
    """AUROC over every test row predicted once without each modality (4 x n rows pooled)."""
    pooled = np.concatenate([probs[m] for m in MODALITIES])
    return float(compute_metrics(np.tile(y, len(MODALITIES)), pooled, "binary", CLASSES)["auroc"])


def run_deep(
    seed: int, args: argparse.Namespace, prepared: Any, work: Path
) -> list[dict[str, Any]]:
    def cfg(mods: tuple[str, ...], fusion: str, p: float) -> Any:
        out = work / f"{'+'.join(mods)}_{fusion}_p{p}"
        return load_config(
            probe_config(
                prepared, out, mods, fusion, seed, dropout=p, epochs=args.epochs, bootstrap=1000
            )
        )

    loaded = steps.load_data(cfg(MODALITIES, "concat", 0.0), work / "all")
    splits = steps.assign_splits(loaded)

    def fit(mods: tuple[str, ...], fusion: str, p: float) -> tuple[api.RunResult, float]:
        c = cfg(mods, fusion, p)
        t0 = time.perf_counter()
        result = steps.train_and_evaluate(
            loaded.select(mods).with_config(c), splits, Path(c.output_dir)
        )
        return result, time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    if "single" in args.arms:
        for m in MODALITIES:
            run, secs = fit((m,), "concat", 0.0)
            t = run.metrics["test"]
            rows.append(
                {
                    "seed": seed,
                    "kind": "single",
                    "modality": m,
                    "auroc": t["auroc"],
                    "ci": [t["ci"]["auroc"]["low"], t["ci"]["auroc"]["high"]],
                    "best_epoch": run.metrics["best_epoch"],
                    "seconds": round(secs, 1),
                }
            )
            print(f"seed {seed} single {m}: {t['auroc']:.3f} ({secs:.0f} s)", flush=True)
    if "fusions" in args.arms:
        for fusion in args.fusions:
            for p in (0.0, args.dropout):
                run, secs = fit(MODALITIES, fusion, p)
                rows.append(fusion_row(seed, fusion, p, run, secs))
    return rows


def fusion_row(seed: int, fusion: str, p: float, run: api.RunResult, secs: float) -> dict[str, Any]:
    t = run.metrics["test"]
    y = (
        (pd.read_csv(run.run_dir / "predictions_test.csv")["label"] == CLASSES[1])
        .to_numpy()
        .astype(int)
    )
    ignores_absent = bool(getattr(FUSIONS.get(fusion), "ignores_absent", False))
    pooled = any_one_missing(y, run.ablation_probs)
    row = {
        "seed": seed,
        "kind": "fusion",
        "fusion": fusion,
        "dropout": p,
        "absent": "masked" if ignores_absent else "learned token",
        "auroc": t["auroc"],
        "ci": [t["ci"]["auroc"]["low"], t["ci"]["auroc"]["high"]],
        "removed": {m: t["ablation"][m] for m in MODALITIES},
        "mean_removal_loss": float(
            np.mean([t["auroc"] - t["ablation"][m]["auroc"] for m in MODALITIES])
        ),
        "any_one_missing_auroc": pooled,
        "any_one_missing_loss": t["auroc"] - pooled,
        "best_epoch": run.metrics["best_epoch"],
        "seconds": round(secs, 1),
    }
    print(
        f"seed {seed} {fusion} p={p}: {t['auroc']:.3f}, removal loss {row['mean_removal_loss']:.3f}, "
        f"any-one-missing loss {row['any_one_missing_loss']:.3f} ({secs:.0f} s)",
        flush=True,
    )
    return row


# -- classical arm: logistic regression on the concatenated observed features --------------------
def observed_features(prepared: Any) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """Manifest, per-modality feature blocks (NaN rows where the modality is absent) and labels."""
    import librosa
    import soundfile
    from PIL import Image
    from sklearn.feature_extraction.text import CountVectorizer

    root = Path(prepared.manifest).parent
    frame = pd.read_csv(prepared.manifest)

    def each(col: str, read: Any, width: int) -> np.ndarray:
        out = np.full((len(frame), width), np.nan)
        for i, v in enumerate(frame[col]):
            if isinstance(v, str) and v:
                out[i] = read(root / v)
        return out

    def logmel(path: Path) -> np.ndarray:
        wave, sr = soundfile.read(path, dtype="float32")
        mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=256, hop_length=64, n_mels=32)
        return librosa.power_to_db(mel).mean(axis=1)

    image = each(
        "image", lambda p: np.asarray(Image.open(p), dtype=float).reshape(-1) / 255.0, 28 * 28
    )
    notes = [(root / v).read_text() if isinstance(v, str) and v else None for v in frame["note"]]
    vocab = CountVectorizer(min_df=2).fit(
        [t for t, s in zip(notes, frame["split"], strict=True) if t and s == "train"]
    )
    text = np.full((len(frame), len(vocab.vocabulary_)), np.nan)
    present = [i for i, t in enumerate(notes) if t]
    text[present] = vocab.transform([notes[i] for i in present]).toarray()
    audio = each("audio", logmel, 32)
    site = pd.get_dummies(frame["site"]).to_numpy(dtype=float)
    tab = np.column_stack([frame[["marker", "age", "bmi"]].to_numpy(dtype=float), site])
    tab[frame["marker"].isna().to_numpy()] = np.nan
    y = (frame["label"] == CLASSES[1]).to_numpy().astype(int)
    return frame, {"image": image, "text": text, "audio": audio, "tabular": tab}, y


def design(
    blocks: dict[str, np.ndarray], means: dict[str, np.ndarray], drop: str | None = None
) -> np.ndarray:
    """Concatenated features: an absent (or dropped) modality = training means + indicator 1."""
    cols = []
    for m in MODALITIES:
        b = blocks[m].copy()
        absent = np.isnan(b).all(axis=1) if drop != m else np.ones(len(b), dtype=bool)
        b[absent] = means[m]
        b = np.where(np.isnan(b), means[m], b)  # a single empty cell (age) inside a present table
        cols += [b, absent[:, None].astype(float)]
    return np.hstack(cols)


def run_logreg(seed: int, prepared: Any) -> dict[str, Any]:
    """Fit on train (C on val AUROC), score test with all modalities, without each, any one missing."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    frame, blocks, y = observed_features(prepared)
    split = frame["split"].to_numpy()
    tr, va, te = split == "train", split == "val", split == "test"
    means = {m: np.nanmean(b[tr], axis=0) for m, b in blocks.items()}
    x = design(blocks, means)
    fits = {
        c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x[tr], y[tr])
        for c in LOGREG_C
    }
    auc = {
        c: compute_metrics(y[va], f.predict_proba(x[va])[:, 1], "binary", CLASSES)["auroc"]
        for c, f in fits.items()
    }
    best = max(LOGREG_C, key=lambda c: auc[c])
    model = fits[best]
    prob = model.predict_proba(x[te])[:, 1]
    s = C.scores(y[te], prob, "binary", CLASSES, ["auroc"], seed=seed)
    without = {m: model.predict_proba(design(blocks, means, drop=m)[te])[:, 1] for m in MODALITIES}
    removed = {
        m: {"auroc": compute_metrics(y[te], p, "binary", CLASSES)["auroc"]}
        for m, p in without.items()
    }
    pooled = any_one_missing(y[te], without)
    return {
        "seed": seed,
        "kind": "classical",
        "model": "logreg",
        "C": best,
        "auroc": s["auroc"],
        "ci": s["auroc_ci"],
        "removed": removed,
        "mean_removal_loss": float(np.mean([s["auroc"] - removed[m]["auroc"] for m in MODALITIES])),
        "any_one_missing_auroc": pooled,
        "any_one_missing_loss": s["auroc"] - pooled,
        "n_features": int(x.shape[1]),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _ms(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _fusion_rows(rows: list[dict[str, Any]], fusion: str, p: float) -> list[dict[str, Any]]:
    return sorted(
        (r for r in rows if r["kind"] == "fusion" and r["fusion"] == fusion and r["dropout"] == p),
        key=lambda r: r["seed"],
    )


def _intro(result: dict[str, Any]) -> list[str]:
    facts, seeds = result["per_seed"][0]["facts"], result["seeds"]
    split = facts["split"]
    return [
        "# Missing-modality study on the fusion probe (SYNTHETIC data)",
        "",
        "**Synthetic data, mechanics only: this is not a clinical result.** The `fusion_probe` data set "
        "(`src/medmodal/datasets/probe.py`) plants the label's evidence in four modalities written as real "
        "files: label = 1 iff z_image + z_text + z_audio + z_tabular > 0 with independent z ~ N(0, 1); each "
        "modality renders only its own latent (plus noise): image = blob brightness/width (28 px PNG), text = "
        "severity words among distractor sentences (.txt), audio = loudness of an amplitude-modulated tone (0.5 s, "
        "4 kHz WAV), tabular = a noisy marker among irrelevant columns. One modality alone is insufficient by "
        "construction.",
        "",
        f"Protocol: {result['n']} cases per seed ({split['train']} train / {split['val']} val / {split['test']} "
        f"test, stratified, ~10 % of cases miss one modality), seeds {seeds} (each seed: its own probe, split and "
        f"training seed). Recipe `probe_config` (shared with tests/test_fusion_probe.py): {result['epochs']} epochs, "
        "Adam lr 3e-3, batch 32, cosine schedule, best epoch by validation AUROC, small encoders (`SMALL_ENCODERS`: "
        f"baseline_cnn, bigru, audio_cnn, mlp), fusion width 32, modality dropout {result['dropout']} vs 0. Mean ± "
        f"sd over {len(seeds)} seeds; 95% CIs in the JSON (1000 bootstrap resamples per run).",
        "",
        "Classical arm: one logistic regression on the concatenated observed features of the four files (image "
        "pixels / 255, word counts of the note (vocabulary from the training notes, min_df 2), the audio's mean "
        "log-mel per band (32 bands), the table's columns with site one-hot), standardised; an absent modality is "
        "its training means plus a missing indicator; C in "
        f"{LOGREG_C} picked on the validation AUROC. It is scored like the fusions: with all modalities, with each "
        "modality removed from every test row, and with any one missing.",
        "",
    ]


def _singles(rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> list[str]:
    body = [
        [
            m,
            _ms([r["auroc"] for r in rows if r["kind"] == "single" and r["modality"] == m]),
            _ms([ref[m] for ref in refs]),
        ]
        for m in MODALITIES
    ]
    body.append(["all four (latent reference)", "", _ms([ref["all"] for ref in refs])])
    head = [
        "modality",
        "test AUROC (trained model)",
        "latent reference (ideal single-modality score)",
    ]
    return [
        "## Single-modality baselines",
        "",
        *C.table(head, body),
        "",
        "The latent reference is the AUROC of the noisy latents themselves (before rendering into files): "
        "the best any model could do with that information.",
        "",
    ]


def _fusions(
    rows: list[dict[str, Any]], result: dict[str, Any], refs: list[dict[str, Any]]
) -> list[str]:
    head = [
        "fusion",
        "absent modality",
        "dropout",
        "test AUROC",
        *(f"without {m}" for m in MODALITIES),
        "mean loss",
        "any one missing: AUROC",
        "any one missing: loss",
    ]
    body = []
    for f in dict.fromkeys(r["fusion"] for r in rows if r["kind"] == "fusion"):
        for p in (0.0, result["dropout"]):
            rs = _fusion_rows(rows, f, p)
            body.append(
                [
                    f,
                    rs[0]["absent"],
                    p,
                    _ms([r["auroc"] for r in rs]),
                    *(_ms([r["removed"][m]["auroc"] for r in rs]) for m in MODALITIES),
                    *(
                        _ms([r[k] for r in rs])
                        for k in (
                            "mean_removal_loss",
                            "any_one_missing_auroc",
                            "any_one_missing_loss",
                        )
                    ),
                ]
            )
    return [
        "## Fusions: AUROC with each modality removed at test time",
        "",
        "Removed = the modality is absent for every test row (the API's ablation table; `concat` fills an absent "
        "modality with its learned missing token, every other fusion masks it out).",
        "",
        *C.table(head, body),
        *_classical_rows(rows),
        "",
        "Latent reference without one modality: "
        + ", ".join(f"{m} {_ms([ref[f'all_but_{m}'] for ref in refs])}" for m in MODALITIES)
        + ".",
        "",
    ]


def _degradation(rows: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    k, p1 = len(result["seeds"]), result["dropout"]
    body = []
    for f in dict.fromkeys(r["fusion"] for r in rows if r["kind"] == "fusion"):
        cells = []
        for key in ("mean_removal_loss", "any_one_missing_loss"):
            off, on = ([r[key] for r in _fusion_rows(rows, f, p)] for p in (0.0, p1))
            wins = sum(d < n for n, d in zip(off, on, strict=True))
            cells.append(f"{_ms(off)} → {_ms(on)} ({wins}/{k})")
        body.append([f, *cells])
    head = [
        "fusion",
        "mean loss, one modality removed from all rows: no dropout → dropout (seeds where smaller)",
        "any one missing (rows miss different modalities): no dropout → dropout (seeds where smaller)",
    ]
    return [
        "## Degradation (loss in AUROC) with vs without modality dropout",
        "",
        *C.table(head, body),
        "",
        '"Any one missing" pools every test row predicted once without each modality (4 × n rows), so rows '
        "missing different modalities are ranked against each other: the missing-token / masking behaviour and "
        "the calibration across missing patterns matter. The per-modality table removes a modality from all rows "
        "at once: in a fusion whose logit is a sum of per-modality terms (concat + linear head, mean, sum, late) "
        "that shifts (or rescales) every score alike, so the ranking, hence the AUROC, is that of the remaining "
        "modalities' terms whether or not the model was trained with dropout; there dropout can only help by "
        "changing those terms.",
        "",
    ]


def to_markdown(result: dict[str, Any]) -> str:
    rows = [r for s in result["per_seed"] for r in s["rows"]]
    refs = [s["facts"]["reference_auroc"] for s in result["per_seed"]]
    lines = [
        *_intro(result),
        *_singles(rows, refs),
        *_fusions(rows, result, refs),
        *_degradation(rows, result),
    ]
    lines += [
        "## Caveats",
        "",
        "- Synthetic data built to test mechanics; nothing here says anything about clinical performance or about "
        "which fusion is better on real patients.",
        "- The probe's label is additive in the four latents, which favours additive fusions (and the linear "
        "classical model); interactions between modalities (where attention / gated fusion could matter) are not "
        "probed.",
        "- Small encoders and short training; the learned models stay below the latent reference (rendering noise, "
        "finite data).",
        f"- {len(result['seeds'])} seed(s): the ± is the spread over seeds, not a confidence interval.",
        "",
        *C.reproduce_section(rows, result.get("env", {})),
    ]
    return "\n".join(lines)


def _classical_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The logistic regression in the fusion table's columns, and how the fusions compare with it."""
    rs = [r for r in rows if r["kind"] == "classical"]
    if not rs:
        return []
    cells = [_ms([r["removed"][m]["auroc"] for r in rs]) for m in MODALITIES]
    line = (
        f"| **logistic regression on the concatenated features (classical)** | training means + indicator | - | "
        f"{_ms([r['auroc'] for r in rs])} | "
        + " | ".join(cells)
        + f" | {_ms([r['mean_removal_loss'] for r in rs])} | {_ms([r['any_one_missing_auroc'] for r in rs])} | "
        f"{_ms([r['any_one_missing_loss'] for r in rs])} |"
    )
    lr = np.asarray([r["auroc"] for r in sorted(rs, key=lambda r: r["seed"])])
    lr_any = np.asarray([r["any_one_missing_auroc"] for r in sorted(rs, key=lambda r: r["seed"])])
    notes = []
    for f in dict.fromkeys(r["fusion"] for r in rows if r["kind"] == "fusion"):
        for p in sorted({r["dropout"] for r in rows if r["kind"] == "fusion"}):
            fr = sorted(
                (
                    r
                    for r in rows
                    if r["kind"] == "fusion" and r["fusion"] == f and r["dropout"] == p
                ),
                key=lambda r: r["seed"],
            )
            if len(fr) != len(rs):
                continue
            below = int(sum(r["auroc"] < v for r, v in zip(fr, lr, strict=True)))
            below_any = int(
                sum(r["any_one_missing_auroc"] < v for r, v in zip(fr, lr_any, strict=True))
            )
            if below or below_any:
                notes.append(
                    f"{f} (dropout {p}): below the logistic regression in {below}/{len(fr)} seeds with "
                    f"all modalities, {below_any}/{len(fr)} with any one missing"
                )
    verdict = (
        "Where the deep fusions lose to the classical model (same probe, split and seed): "
        + "; ".join(notes)
        + "."
        if notes
        else "Every deep fusion beats the classical model in every seed, with all modalities and with any one missing."
    )
    return [line, "", verdict]


def load_previous(out: Path) -> dict[str, Any]:
    old = C.read_json(out.with_suffix(".json")) or {}
    legacy = C.legacy_provenance(out.with_suffix(".json"), old.get("command"))
    for s in old.get("per_seed", []):
        for r in s["rows"]:
            r.setdefault("provenance", legacy)
    for key in ("command", "wall_seconds", "environment"):
        old.pop(key, None)  # older layout: now per row / per invocation
    return old


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return r["kind"], r.get("modality"), r.get("fusion"), r.get("dropout"), r.get("model")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    C.add_common_args(ap, NAME, arms=ARMS, seeds=[0, 1, 2])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--fusions", nargs="+", default=FUSIONS.names())
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    old = C.previous_results(args, out, load_previous, to_markdown)
    if old is None:
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    per_seed = {s["seed"]: s for s in old.get("per_seed", [])}
    for seed in args.seeds:
        work = Path(args.work) / f"seed{seed}_n{args.n}"
        prepared = get_dataset("fusion_probe").prepare(work / "data", n=args.n, seed=seed)
        rows = (
            run_deep(seed, args, prepared, work) if {"single", "fusions"} & set(args.arms) else []
        )
        if "logreg" in args.arms:
            rows.append(run_logreg(seed, prepared))
        prov = C.provenance()
        for r in rows:
            r["provenance"] = prov
        block = per_seed.setdefault(seed, {"seed": seed, "rows": []})
        block["facts"] = prepared.facts
        block["rows"] = C.merge_rows(block["rows"], rows, row_key)
    result = {
        **old,
        "benchmark": NAME,
        "synthetic": "SYNTHETIC fusion probe: mechanics, not a clinical result",
        "n": args.n,
        "epochs": args.epochs,
        "dropout": args.dropout,
        "env": C.environment(),
        "per_seed": [per_seed[s] for s in sorted(per_seed)],
        "seeds": sorted(per_seed),
    }
    C.finish(out, result, old, args.arms, t0, to_markdown)
    print(f"wrote {out}.md in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
