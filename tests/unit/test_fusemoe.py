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

