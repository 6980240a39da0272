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
