import dataclasses

import numpy as np
import pytest
import torch

from ensemble import fusemoe
from export.artifacts import ArtifactError
from export.registry import FuseMoEConfig

SMALL = FuseMoEConfig(gate_hidden=32, expert_hidden=48, output_dim=24)


def _inputs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, SMALL.input_dim, generator=g), dim=-1)


def _reference(model: fusemoe.FuseMoE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Every expert on every row, then the top-k mix: the definition, item by item."""
    rows = []
    for row in x:
        probs = model.gate(row[None])[0]
        top = torch.argsort(probs, descending=True)[:k]
        w = probs[top] / probs[top].sum()
        mixed = sum(w[j] * model.experts[int(e)](row[None])[0] for j, e in enumerate(top))
        rows.append(torch.nn.functional.normalize(mixed, dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize("k", [1, 2, 8])
def test_grouped_experts_equal_the_per_item_definition(k):
    model = fusemoe.seeded(SMALL)
    x = _inputs(17)
    with torch.no_grad():
        out = model(x, top_k=k)
        ref = _reference(model, x, k)
    torch.testing.assert_close(out.fused, ref, atol=1e-5, rtol=1e-5)
    assert out.selected_experts.shape == (17, k) and out.selected_experts.dtype == torch.int32


def test_outputs_are_unit_norm_probabilities_and_the_top_two():
    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        out = model(_inputs(9))
    torch.testing.assert_close(out.fused.norm(dim=-1), torch.ones(9))
    torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(9))
    top2 = torch.topk(out.expert_weights, 2).indices.to(torch.int32)
    assert torch.equal(out.selected_experts, top2)


def test_batched_equals_single():
    model = fusemoe.seeded(SMALL)
    x = _inputs(8, seed=3)
    with torch.no_grad():
        batch = model(x).fused
        single = torch.cat([model(x[i:i + 1]).fused for i in range(8)])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=1e-6)


def test_missing_blocks_are_zeroed_by_the_presence_mask():
    model = fusemoe.seeded(SMALL)
    x = _inputs(2)
    presence = torch.ones(2, 12)
    presence[:, 0] = 0  # E1 missing: its 1024 values must not matter
    y = x.clone()
    y[:, :1024] = 123.0
    with torch.no_grad():
        torch.testing.assert_close(model(x, presence).fused, model(y, presence).fused)
        zeroed = x.clone()
        zeroed[:, :1024] = 0.0
        torch.testing.assert_close(model(x, presence).fused, model(zeroed).fused)


def test_a_missing_block_is_the_fill_whatever_the_input_holds():
    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        model.fill.copy_(_inputs(1, seed=9)[0])
    x = _inputs(3, seed=2)
    presence = torch.ones(3, 12)
    presence[:, [0, 10]] = 0  # E1 (0:1024) and E11 (7808:8192) missing
    filled = x.clone()
    for lo, hi in ((0, 1024), (7808, 8192)):
        filled[:, lo:hi] = model.fill[lo:hi]
    garbage = x.clone()
    garbage[:, :1024] = 7.0
    with torch.no_grad():
        want = model(filled).fused
        torch.testing.assert_close(model(x, presence).fused, want)
        torch.testing.assert_close(model(garbage, presence).fused, want)
        assert not torch.allclose(model(x).fused, want, atol=1e-3)


def test_the_fill_is_saved_and_a_checkpoint_without_one_fills_zeros(tmp_path):
    from safetensors.torch import save_file

    from export.artifacts import Manifest, manifest_path, sha256_file

    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        model.fill.copy_(_inputs(1, seed=9)[0])
    fusemoe.save(model, tmp_path / "new", "with-fill")
    loaded, _ = fusemoe.load(tmp_path / "new", SMALL)
    torch.testing.assert_close(loaded.fill, model.fill)
    old = tmp_path / "old"
    old.mkdir()
    data = old / f"{fusemoe.WEIGHTS_STEM}.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k != "fill"}, str(data))
    Manifest("before-fill", sha256_file(data), data.name, {}).write(
        manifest_path(old, fusemoe.WEIGHTS_STEM))
    loaded, _ = fusemoe.load(old, SMALL)
    assert torch.equal(loaded.fill, torch.zeros(SMALL.input_dim))


def test_only_rows_from_an_image_have_e10_mapped_and_the_map_is_saved(tmp_path):
    """from_image rows fuse E10 * image_scale + image_offset, the other rows E10 as given;
    a checkpoint from before the map loads as the identity."""
    from safetensors.torch import save_file

    from export.artifacts import Manifest, manifest_path, sha256_file

    model = fusemoe.seeded(SMALL)
    start, end = model.image_block
    with torch.no_grad():
        model.image_scale.fill_(1.7)
        model.image_offset.copy_(_inputs(1, seed=5)[0, :end - start])
    x = _inputs(3, seed=6)
    mapped = x.clone()
    mapped[:, start:end] = x[:, start:end] * 1.7 + model.image_offset
    with torch.inference_mode():
        got = model(x, from_image=torch.tensor([True, False, True])).fused
        torch.testing.assert_close(got[[0, 2]], model(mapped[[0, 2]]).fused)
        torch.testing.assert_close(got[1], model(x[[1]]).fused[0])
        assert not torch.allclose(got[0], model(x[[0]]).fused[0], atol=1e-3)
    fusemoe.save(model, tmp_path / "new", "with-map")
    loaded, _ = fusemoe.load(tmp_path / "new", SMALL)
    assert float(loaded.image_scale) == pytest.approx(1.7)
    torch.testing.assert_close(loaded.image_offset, model.image_offset)
    old = tmp_path / "old"
    old.mkdir()
    data = old / f"{fusemoe.WEIGHTS_STEM}.safetensors"
    save_file({k: v for k, v in model.state_dict().items()
               if k not in ("image_scale", "image_offset")}, str(data))
    Manifest("before-map", sha256_file(data), data.name, {}).write(
        manifest_path(old, fusemoe.WEIGHTS_STEM))
    loaded, _ = fusemoe.load(old, SMALL)
    assert float(loaded.image_scale) == 1.0 and not loaded.image_offset.any()


def test_seeded_init_is_deterministic():
    a, b = fusemoe.seeded(SMALL), fusemoe.seeded(SMALL)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_weights_round_trip_and_a_bad_checksum_is_a_load_error(tmp_path):
    model = fusemoe.seeded(SMALL)
    manifest = fusemoe.save(model, tmp_path, "test-1")
    loaded, read = fusemoe.load(tmp_path, SMALL)
    assert read.sha256 == manifest.sha256 and read.version == "test-1"
    x = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).fused, model(x).fused)
    data = tmp_path / manifest.file
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="does not match"):
        fusemoe.load(tmp_path, SMALL)


def test_weights_of_another_shape_are_a_load_error(tmp_path):
    fusemoe.save(fusemoe.seeded(SMALL), tmp_path, "small")
    with pytest.raises(ArtifactError, match="do not fit"):
        fusemoe.load(tmp_path, FuseMoEConfig(gate_hidden=16, expert_hidden=48, output_dim=24))



def _reference_row(model: fusemoe.FuseMoE, row: torch.Tensor, k: int, t: float,
                   focus: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """One item by the definition: missing blocks filled, blocks scaled, softmax(z / t),
    top-k renormalised."""
    present = model._expand_blocks(presence[None])[0] > 0
    row = torch.where(present, row, model.fill) * model._expand_blocks(focus[None])[0]
    probs = model.gate(row[None], t)[0]
    top = torch.argsort(probs, descending=True)[:k]
    w = probs[top] / probs[top].sum()
    mixed = sum(w[j] * model.experts[int(e)](row[None])[0] for j, e in enumerate(top))
    return torch.nn.functional.normalize(mixed, dim=-1)


def test_per_item_controls_equal_the_definition_item_by_item():
    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        model.fill.copy_(_inputs(1, seed=8)[0])
    x = _inputs(6, seed=5)
    k = torch.tensor([1, 2, 3, 8, 2, 5])
    t = torch.tensor([1.0, 0.1, 4.0, 1.0, 20.0, 0.5])
    g = torch.Generator().manual_seed(1)
    focus = torch.rand(6, 12, generator=g) * 3
    presence = torch.ones(6, 12)
    presence[2, [0, 5]] = 0
    with torch.no_grad():
        out = model(x, presence=presence, top_k=k, temperature=t, focus=focus)
        ref = torch.stack([_reference_row(model, x[i], int(k[i]), float(t[i]),
                                          focus[i], presence[i]) for i in range(6)])
    torch.testing.assert_close(out.fused, ref, atol=1e-5, rtol=1e-5)
    # selected_experts: as many columns as the largest k, -1 past each row's k
    assert out.selected_experts.shape == (6, 8)
    for i in range(6):
        assert (out.selected_experts[i, :k[i]] >= 0).all()
        assert (out.selected_experts[i, k[i]:] == -1).all()


def test_temperature_sharpens_and_flattens_the_gate():
    model = fusemoe.seeded(SMALL)
    x = _inputs(4)
    with torch.no_grad():
        cold = model(x, temperature=0.05).expert_weights
        hot = model(x, temperature=20.0).expert_weights
    assert (cold.max(-1).values > hot.max(-1).values).all()
    assert (_entropy(hot) > _entropy(cold)).all()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def test_capacity_drops_assignments_over_capacity_in_training_only():
    model = fusemoe.seeded(SMALL)
    # All rows identical: every row routes to the same two experts.
    x = _inputs(1).repeat(40, 1)
    with torch.no_grad():
        capped = model(x, capacity_factor=1.25)
        free = model(x)
    capacity = -(-1.25 * 40 * 2 // 8)  # ceil: 13 rows per expert
    dropped = capped.fused.norm(dim=-1) == 0
    assert int((~dropped).sum()) == capacity  # the rest lost both experts
    torch.testing.assert_close(free.fused.norm(dim=-1), torch.ones(40))  # inference: none lost


def test_gate_noise_changes_routing_only_when_asked():
    model = fusemoe.seeded(SMALL)
    x = _inputs(64, seed=2)
    with torch.no_grad():
        base = model(x).selected_experts
        again = model(x).selected_experts
        noisy = model(x, noise_std=2.0).selected_experts
    assert torch.equal(base, again)
    assert not torch.equal(base, noisy)


def test_install_copies_a_verified_checkpoint(tmp_path):
    src, dst = tmp_path / "ckpt", tmp_path / "repo" / "2"
    fusemoe.save(fusemoe.seeded(SMALL), src, "trained-test")
    _, manifest = fusemoe.install(src, dst)
    assert manifest.version == "trained-test"
    assert fusemoe.load(dst, SMALL)[1].sha256 == manifest.sha256
    # make build installs into the version folder it installed into before: replaced.
    other = tmp_path / "other"
    fusemoe.save(fusemoe.seeded(dataclasses.replace(SMALL, seed=SMALL.seed + 1)), other,
                 "trained-other")
    _, again = fusemoe.install(other, dst)
    assert again.version == "trained-other" and again.sha256 != manifest.sha256
    assert fusemoe.load(dst, SMALL)[1].version == "trained-other"


def test_gate_noise_is_added_to_the_logits_with_its_spread():
    """With a seed, the noisy gate is softmax(logits + std * the seeded normal draws)."""
    model = fusemoe.seeded(SMALL)
    x = _inputs(5)
    with torch.no_grad():
        logits = model.gate_fc2(torch.nn.functional.gelu(model.gate_fc1(model.norm(x))))
        torch.manual_seed(11)
        noisy = model.gate(x, noise_std=0.7)
        torch.manual_seed(11)
        draws = torch.randn_like(logits)
    torch.testing.assert_close(noisy, torch.softmax(logits + 0.7 * draws, dim=-1))


def test_a_temperature_tensor_is_one_per_row_in_the_logits_dtype():
    model = fusemoe.seeded(SMALL)
    x = _inputs(3)
    with torch.no_grad():
        t = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
        probs = model.gate(x, temperature=t)
        assert probs.dtype == torch.float32
        for i in range(3):
            torch.testing.assert_close(probs[i:i + 1], model.gate(x[i:i + 1],
                                                                 temperature=float(t[i])))


def test_fuse_passes_every_validated_control_to_the_model():
    from ensemble.validation import Validator
    from export.registry import EMBEDDERS

    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        model.image_scale.fill_(1.7)  # a map that is not the identity: FROM_IMAGE shows
    x = _inputs(4)
    presence = np.ones((4, len(EMBEDDERS)), dtype=bool)
    presence[1, 10] = False
    focus = np.ones((4, len(EMBEDDERS)), dtype=np.float32)
    focus[2, 7] = 3.0
    controls = Validator().controls(4, top_k=np.array([[1], [2], [3], [8]]),
                                    temperature=np.array([[0.5], [1.0], [2.0], [1.0]]),
                                    focus=focus, presence=presence,
                                    from_image=np.array([[False], [False], [False], [True]]))
    out = fusemoe.fuse(model, x, controls)
    with torch.no_grad():
        want = model(x, presence=torch.from_numpy(presence).float(),
                     top_k=torch.tensor([1, 2, 3, 8]),
                     temperature=torch.tensor([0.5, 1.0, 2.0, 1.0]),
                     focus=torch.from_numpy(focus), from_image=torch.tensor([0, 0, 0, 1]).bool())
        plain = model(x)
    torch.testing.assert_close(out.fused, want.fused)
    torch.testing.assert_close(out.expert_weights, want.expert_weights)
    assert torch.equal(out.selected_experts, want.selected_experts)
    assert out.selected_experts.shape == (4, 8)
    assert not torch.allclose(out.fused[:3], plain.fused[:3])
    assert not torch.allclose(out.expert_weights[2], plain.expert_weights[2])  # temperature
    unmapped = model(x[[3]], top_k=torch.tensor([8])).fused[0]
    assert not torch.allclose(out.fused[3], unmapped, atol=1e-3)  # the image row was mapped


def test_a_fusion_output_moves_with_its_three_parts_in_order():
    out = fusemoe.FusionOutput(torch.ones(2, 3), torch.zeros(2, 4), torch.full((2, 1), 7))
    moved = out.to("cpu")
    assert torch.equal(moved.fused, out.fused)
    assert torch.equal(moved.expert_weights, out.expert_weights)
    assert torch.equal(moved.selected_experts, out.selected_experts)


def test_capacity_is_per_expert_best_weights_first():
    """Rows 0-1 go to expert 0 and rows 2-3 to expert 1; a capacity of 1 keeps the
    heavier of each pair (two kept, not the single heaviest overall)."""
    model = fusemoe.seeded(SMALL)  # 8 experts: factor 2 over 4 assignments is capacity 1
    idx = torch.tensor([[0], [0], [1], [1]])
    kept = torch.tensor([[0.9], [0.8], [0.3], [0.4]])
    valid = torch.ones(4, 1, dtype=torch.bool)
    keep = model._within_capacity(idx, kept, valid, 2.0)
    assert keep.reshape(-1).tolist() == [True, False, False, True]
    assert model._within_capacity(idx, kept, valid, 16.0).all()  # room for every row


def test_per_row_k_is_a_long_tensor_from_an_int_or_a_tensor():
    model = fusemoe.seeded(SMALL)
    from_int = model._per_row_k(3, 4, torch.device("cpu"))
    assert from_int.dtype == torch.long and from_int.tolist() == [3, 3, 3, 3]
    from_tensor = model._per_row_k(torch.tensor([[1], [2]], dtype=torch.int32), 2,
                                   torch.device("cpu"))
    assert from_tensor.dtype == torch.long and from_tensor.tolist() == [1, 2]
    assert model._per_row_k(None, 2, torch.device("cpu")).tolist() == [SMALL.top_k] * 2


def test_save_makes_the_folders_and_records_the_version_and_config(tmp_path):
    from safetensors import safe_open

    folder = tmp_path / "a" / "b" / "v1"
    manifest = fusemoe.save(fusemoe.seeded(SMALL), folder, "v1", extra={"note": "x"})
    with safe_open(str(folder / "fusemoe.safetensors"), "pt") as f:
        assert f.metadata() == {"version": "v1"}
    assert manifest.version == "v1" and manifest.extra["note"] == "x"
    assert manifest.extra["config"]["output_dim"] == SMALL.output_dim


def test_load_is_strict_and_takes_the_built_precision(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ck"
    fusemoe.save(fusemoe.seeded(SMALL), folder, "v1")
    model, _ = fusemoe.load(folder, SMALL)
    assert type(model.experts[0].fc1) is torch.nn.Linear
    (folder / "build.json").write_text(json.dumps({"precision": "int8"}))
    quantized, _ = fusemoe.load(folder, SMALL)
    assert type(quantized.experts[0].fc1) is not torch.nn.Linear
    (folder / "build.json").write_text(json.dumps({"key": "no precision recorded"}))
    plain, _ = fusemoe.load(folder, SMALL)
    assert type(plain.experts[0].fc1) is torch.nn.Linear
    # A tensor the model does not have is refused, not ignored.
    tensors = load_file(str(folder / "fusemoe.safetensors"))
    tensors["stray.weight"] = torch.zeros(2)
    extra = tmp_path / "extra"
    fusemoe.save(fusemoe.seeded(SMALL), extra, "v2")
    save_file(tensors, str(extra / "fusemoe.safetensors"), metadata={"version": "v2"})
    from export.artifacts import Manifest, manifest_path, sha256_file

    path = manifest_path(extra, fusemoe.WEIGHTS_STEM)
    m = Manifest.read(path)
    Manifest(m.version, sha256_file(extra / "fusemoe.safetensors"), m.file, m.extra).write(path)
    with pytest.raises(ArtifactError, match=r"(?s)weights do not fit FuseMoE .*stray\.weight"):
        fusemoe.load(extra, SMALL)
    # And so is a checkpoint that lacks one (it would serve the random initial weights).
    del tensors["stray.weight"], tensors["gate_fc1.weight"]
    save_file(tensors, str(extra / "fusemoe.safetensors"), metadata={"version": "v2"})
    Manifest(m.version, sha256_file(extra / "fusemoe.safetensors"), m.file, m.extra).write(path)
    with pytest.raises(ArtifactError, match=r"(?s)weights do not fit FuseMoE .*gate_fc1\.weight"):
        fusemoe.load(extra, SMALL)


def test_a_precision_other_than_fp32_or_int8_is_refused_by_name(tmp_path):
    fusemoe.save(fusemoe.seeded(SMALL), tmp_path, "v1")
    with pytest.raises(ArtifactError, match=r"FuseMoE runs in fp32 or int8, not fp16$"):
        fusemoe.load(tmp_path, SMALL, precision="fp16")


def test_a_checkpoint_s_int8_scales_are_float32():
    from export.artifacts import Manifest

    outputs = fusemoe.Outputs.of(Manifest("f", "s", "v", {"dimensions": [24, 8],
                                                          "int8_scale": {"8": [0.5] * 8}}), SMALL)
    assert outputs.dimensions == (24, 8)
    assert outputs.int8_scale[8].dtype == np.float32 and outputs.int8_scale[8].tolist() == [
        0.5] * 8
