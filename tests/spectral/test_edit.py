"""Edits reconstructed by hand with numpy's SVD, whole-rank rules, and checkpoint edits on tiny models."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlheal.spectral import SpectralError, edit_checkpoint, edit_matrix
from rlheal.spectral.weights import CheckpointWeights


def pair(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    W_ref = rng.standard_normal((m, n))
    return W_ref, W_ref + 0.3 * rng.standard_normal((m, n))


def by_hand(W_ref, W_t, mode, chosen):
    """U' Σ' V'ᵀ from full thin numpy SVDs with the chosen indices taken from the reference."""
    Ur, sr, Vrt = np.linalg.svd(W_ref, full_matrices=False)
    Ut, st, Vtt = np.linalg.svd(W_t, full_matrices=False)
    U, s, Vt = Ut.copy(), st.copy(), Vtt.copy()
    if mode in ("values", "triplets"):
        s[chosen] = sr[chosen]
    if mode in ("vectors", "triplets"):
        U[:, chosen], Vt[chosen] = Ur[:, chosen], Vrt[chosen]
    return U @ np.diag(s) @ Vt


@pytest.mark.parametrize("mode", ["values", "vectors", "triplets"])
@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
@pytest.mark.parametrize("top,tail", [(3, 0), (0, 2), (3, 2), (0.25, 0.1)])
def test_each_mode_matches_the_hand_reconstruction(mode, shape, top, tail):
    W_ref, W_t = pair(*shape)
    r = min(shape)
    nt = round(top * r) if isinstance(top, float) else top
    nl = round(tail * r) if isinstance(tail, float) else tail
    chosen = sorted(set(range(nt)) | set(range(r - nl, r)))
    got = edit_matrix(W_ref, W_t, mode, top=top, tail=tail)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, by_hand(W_ref, W_t, mode, chosen), atol=1e-10)


def test_methods_agree_and_torch_in_torch_out():
    W_ref, W_t = pair(10, 25, seed=1)
    exact = edit_matrix(torch.tensor(W_ref), torch.tensor(W_t), "vectors", top=4, method="svd64")
    fast = edit_matrix(torch.tensor(W_ref), torch.tensor(W_t), "vectors", top=4, method="gram64")
    assert isinstance(fast, torch.Tensor)
    np.testing.assert_allclose(fast.numpy(), exact.numpy(), atol=1e-11)


def test_vectors_mode_is_immune_to_the_joint_sign_flip_of_singular_pairs():
    # hand-built SVDs with known vectors; the reference's first pair appears with either sign
    rng = np.random.default_rng(5)
    U = np.linalg.qr(rng.standard_normal((6, 6)))[0][:, :4]
    V = np.linalg.qr(rng.standard_normal((9, 9)))[0][:, :4]
    Ur = np.linalg.qr(rng.standard_normal((6, 6)))[0][:, :4]
    Vr = np.linalg.qr(rng.standard_normal((9, 9)))[0][:, :4]
    s_t, s_r = np.array([5.0, 3.0, 2.0, 1.0]), np.array([6.0, 2.5, 1.5, 0.5])
    W_t, W_ref = U @ np.diag(s_t) @ V.T, Ur @ np.diag(s_r) @ Vr.T
    expected = W_t - s_t[0] * np.outer(U[:, 0], V[:, 0]) + s_t[0] * np.outer(Ur[:, 0], Vr[:, 0])
    flipped = W_t - s_t[0] * np.outer(U[:, 0], V[:, 0]) + s_t[0] * np.outer(-Ur[:, 0], -Vr[:, 0])
    np.testing.assert_allclose(expected, flipped)
    np.testing.assert_allclose(edit_matrix(W_ref, W_t, "vectors", top=1), expected, atol=1e-12)
    # flipping only one side would be a different (wrong) matrix: the test can tell them apart
    assert np.abs(expected - (W_t - 2 * s_t[0] * np.outer(U[:, 0], V[:, 0]))).max() > 0.1


def test_whole_rank_results_are_defined_and_announced():
    W_ref, W_t = pair(8, 20, seed=2)
    Ur, sr, Vrt = np.linalg.svd(W_ref, full_matrices=False)
    Ut, st, Vtt = np.linalg.svd(W_t, full_matrices=False)
    with pytest.warns(UserWarning, match="returns the reference matrix"):
        assert np.array_equal(edit_matrix(W_ref, W_t, "triplets", top=5, tail=3), W_ref)
    with pytest.warns(UserWarning, match=r"U_ref Σ_target V_refᵀ \(not W_ref\)"):
        got = edit_matrix(W_ref, W_t, "vectors", top=1.0)
    np.testing.assert_allclose(got, Ur @ np.diag(st) @ Vrt, atol=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # values over the whole rank is the paper's plain "values" edit
        np.testing.assert_allclose(edit_matrix(W_ref, W_t, "values"), Ut @ np.diag(sr) @ Vtt, atol=1e-11)


def test_k_beyond_the_rank_is_clipped_with_a_warning_naming_the_tensor():
    W_ref, W_t = pair(6, 14, seed=3)
    with pytest.warns(UserWarning, match="layers.3.k_proj.*exceeds the rank 6"):
        got = edit_matrix(W_ref, W_t, "values", top=50, name="layers.3.k_proj")
    Ut, _, Vtt = np.linalg.svd(W_t, full_matrices=False)
    np.testing.assert_allclose(got, Ut @ np.diag(np.linalg.svd(W_ref, compute_uv=False)) @ Vtt, atol=1e-11)


def test_bad_edit_arguments():
    W_ref, W_t = pair(5, 7)
    with pytest.raises(SpectralError, match="unknown edit mode"):
        edit_matrix(W_ref, W_t, "layers")
    with pytest.raises(SpectralError, match="differs from target"):
        edit_matrix(W_ref, W_t[:, :6], "values")
    with pytest.raises(SpectralError, match="out of range"):
        edit_matrix(W_ref, W_t, "values", top=-1)


def test_checkpoint_edit_changes_only_the_chosen_tensors(ckpts, tmp_path):
    out = edit_checkpoint(ckpts["base"], ckpts["sharded"], tmp_path / "edited", "vectors", top=0.25, tail=2,
                          modules="q,k,down", layers={0}, device="cpu", cache=None, progress=False)
    src = CheckpointWeights(ckpts["sharded"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p.name for p in ckpts["sharded"].iterdir()), "rlheal_manifest.json"])
    edited = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
              "model.layers.0.mlp.down_proj.weight"}
    base = CheckpointWeights(ckpts["base"])
    for file in src.files:
        before, after = load_file(ckpts["sharded"] / file), load_file(out / file)
        assert before.keys() == after.keys()
        for name, tensor in after.items():
            assert tensor.dtype == before[name].dtype
            if name in edited:
                want = edit_matrix(base.load(name), src.load(name), "vectors", top=0.25, tail=2)
                torch.testing.assert_close(tensor, want.float(), atol=1e-6, rtol=0)
                assert not torch.equal(tensor, before[name])
            else:
                assert torch.equal(tensor, before[name])
    manifest = json.loads((out / "rlheal_manifest.json").read_text())
    assert manifest["stage"] == "edit" and manifest["parent"] == str(ckpts["sharded"].resolve())
    assert manifest["extra"]["mode"] == "vectors" and manifest["extra"]["edited_tensors"] == 3


def test_layers_mode_restores_whole_layers_and_keeps_bf16(ckpts, tmp_path):
    out = edit_checkpoint(ckpts["base"], ckpts["bf16"], tmp_path / "restored", "layers", layers={1},
                          device="cpu", progress=False)
    base, target, new = (CheckpointWeights(p) for p in (ckpts["base"], ckpts["bf16"], out))
    for name in new.all_names:
        got = load_file(out / new.all_names[name])[name]
        assert got.dtype == torch.bfloat16
        source = base if ".layers.1." in name else target
        assert torch.equal(got, source.load(name, torch.float64).to(torch.bfloat16))
    with pytest.raises(SpectralError, match="needs --layers"):
        edit_checkpoint(ckpts["base"], ckpts["bf16"], tmp_path / "x", "layers", progress=False)
    with pytest.raises(FileExistsError):
        edit_checkpoint(ckpts["base"], ckpts["bf16"], out, "layers", layers={0}, progress=False)
