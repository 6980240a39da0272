"""Training pieces: the corpus reads STS-B train only (dev chooses, test reports); the start
reproduces the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensemble import corpus, fusemoe, train
from export.registry import EMBEDDERS, FuseMoEConfig

SMALL = FuseMoEConfig(gate_hidden=32, expert_hidden=1024, output_dim=512)


def test_the_test_split_is_refused():
    with pytest.raises(ValueError, match="reports only"):
        corpus.sentences("test")


def test_training_reads_the_train_split_and_no_dev_or_test_sentence():
    from export.stsb import DATA, load_split

    def split(name: str) -> set[str]:
        pairs = load_split(DATA, name)
        return set(pairs.first) | set(pairs.second)

    data = train.training_data(train.TrainConfig())
    texts = set(data.texts)
    trained = split("train")
    assert len(texts & trained) >= 0.99 * len(trained)
    held_back = (split("dev") | split("test")) - trained  # for choices and for reports
    assert not texts & held_back, sorted(texts & held_back)[:3]
    assert data.description["sts_train_sentences"] == len(trained)


def test_code_pairs_are_deterministic_and_the_code_has_no_docstring():
    a, b = corpus.code_pairs(50, seed=1), corpus.code_pairs(50, seed=1)
    assert a == b and len(a) == 50
    for p in a:
        assert p.first not in p.second  # the summary was cut out of the source
        assert p.second.startswith(("def ", "async def "))
        assert len(p.second) <= corpus.MAX_CODE_CHARS


def test_augmented_views_drop_words_and_keep_order_mostly():
    import random

    text = "one two three four five six seven eight nine ten"
    view = corpus.augmented(text, random.Random(0))
    assert view != text and set(view.split()) <= set(text.split())


def _blocks(n: int, seed: int = 0, topics: int = 10) -> torch.Tensor:
    """Unit blocks with a shared direction per block, as real embedders produce, and texts
    in topics (so similarities spread from unrelated to close)."""
    g = torch.Generator().manual_seed(seed)
    topic = torch.arange(n) % topics
    parts = []
    for e in EMBEDDERS:
        common = torch.randn(e.dim, generator=g)
        centres = torch.randn(topics, e.dim, generator=g)
        parts.append(torch.nn.functional.normalize(
            common + centres[topic] + 0.7 * torch.randn(n, e.dim, generator=g), dim=-1))
    return torch.cat(parts, dim=-1)


def test_the_start_of_training_reproduces_the_teacher_similarity():
    x = _blocks(200)
    means = [b.mean(0) for b in train._split_blocks(x)]
    weights = torch.rand(len(EMBEDDERS), generator=torch.Generator().manual_seed(1))
    weights /= weights.sum()
    teacher = train.teacher_vectors(x, means, weights)
    model = fusemoe.seeded(SMALL)
    train.initialise(model, x, means, weights, seed=3)
    with torch.no_grad():
        fused = model(x).fused
    iu = torch.triu_indices(200, 200, 1)
    t = (teacher @ teacher.T)[iu[0], iu[1]]
    f = (fused @ fused.T)[iu[0], iu[1]]
    corr = float(np.corrcoef(t.numpy(), f.numpy())[0, 1])
    assert corr > 0.95, corr
    # upcycled: every expert starts identical
    first = model.experts[0].state_dict()
    for expert in model.experts[1:]:
        assert all(torch.equal(first[k], v) for k, v in expert.state_dict().items())


def test_block_weights_favour_the_block_that_separates_positive_pairs():
    x = _blocks(300, seed=4, topics=1)
    # Pairs (i, i + 150): make block E11 of the partner a near copy, the rest unrelated.
    e11 = next(j for j, e in enumerate(EMBEDDERS) if e.id == "E11")
    parts = train._split_blocks(x.clone())
    parts[e11][150:] = parts[e11][:150] + 0.05 * torch.randn(150, parts[e11].shape[1])
    x = torch.cat(parts, dim=-1)
    pairs = np.stack([np.arange(150), np.arange(150) + 150], axis=1)
    means = [b.mean(0) for b in train._split_blocks(x)]
    w = train.block_weights(x, pairs, means, seed=0)
    assert int(torch.argmax(w)) == e11 and float(w[e11]) > 0.9
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


def test_d_prime_over_both_spreads_does_not_favour_a_block_that_only_scores_strangers_alike():
    """A sparse lexical block (E6 here): unrelated texts share no terms, so their cosines sit
    at 0 with almost no spread, while its pairs share anything from none to all of their
    terms. A dense block (E11) puts every pair at about the same cosine. Over the random
    pairs' spread alone the sparse block wins; over both spreads (the default) the block
    that separates every pair does."""
    g = torch.Generator().manual_seed(7)
    n = 400
    x = _blocks(2 * n, seed=5, topics=1)
    parts = train._split_blocks(x.clone())
    e6, e11 = (next(j for j, e in enumerate(EMBEDDERS) if e.id == b) for b in ("E6", "E11"))
    sparse = torch.zeros(2 * n, parts[e6].shape[1])
    for i in range(n):
        terms = torch.randperm(parts[e6].shape[1], generator=g)[:40]
        shared = int(torch.randint(0, 41, (1,), generator=g))
        other = torch.randperm(parts[e6].shape[1], generator=g)[:40 - shared]
        sparse[i, terms] = 1.0
        sparse[n + i, torch.cat([terms[:shared], other])] = 1.0
    parts[e6] = torch.nn.functional.normalize(sparse, dim=-1)
    dense = torch.nn.functional.normalize(torch.randn(n, parts[e11].shape[1], generator=g), dim=-1)
    parts[e11] = torch.cat([dense, torch.nn.functional.normalize(
        dense + 1.2 * torch.nn.functional.normalize(
            torch.randn(n, parts[e11].shape[1], generator=g), dim=-1), dim=-1)])
    x = torch.cat(parts, dim=-1)
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
    means = [b.mean(0) for b in train._split_blocks(x)]
    pooled = train.block_weights(x, pairs, means, seed=0, power=4.0)
    random_only = train.block_weights(x, pairs, means, seed=0, power=4.0, spread="random")
    assert int(torch.argmax(random_only)) == e6, random_only
    assert int(torch.argmax(pooled)) == e11 and float(pooled[e11]) > 2 * float(pooled[e6])
    assert train.TrainConfig().teacher_spread == "pooled"
    with pytest.raises(ValueError, match="spread must be"):
        train.block_weights(x, pairs, means, seed=0, spread="std")


def test_load_balance_is_one_when_uniform_and_eight_when_collapsed():
    b = 64
    uniform = fusemoe.FusionOutput(torch.zeros(b, 4), torch.full((b, 8), 1 / 8),
                                   torch.arange(2 * b).reshape(b, 2) % 8)
    assert abs(float(train.load_balance(uniform, 8)) - 1.0) < 1e-6
    probs = torch.zeros(b, 8)
    probs[:, 0] = 1.0
    collapsed = fusemoe.FusionOutput(torch.zeros(b, 4), probs, torch.zeros(b, 1, dtype=torch.int32))
    assert abs(float(train.load_balance(collapsed, 8)) - 8.0) < 1e-6


def test_the_balanced_start_routes_every_expert_an_equal_share():
    x = _blocks(600, seed=2)
    model = fusemoe.seeded(SMALL)
    with torch.no_grad():
        before = model(x).selected_experts.reshape(-1)
    train.balance_gate(model, x)
    with torch.no_grad():
        out = model(x)
    share = torch.bincount(out.selected_experts.reshape(-1).long(), minlength=8).float()
    share /= share.sum()
    assert share.min() >= 0.09, share  # 1/8 = 0.125 each, within a few rows
    spread = torch.bincount(before.long(), minlength=8).float() / before.numel()
    assert spread.max() - spread.min() > share.max() - share.min()
    mass = train.routing_mass(out, 8)
    assert abs(sum(mass) - 1.0) < 1e-5 and min(mass) >= 0.05, mass


def test_the_principal_start_reproduces_the_teacher_and_orders_its_prefixes():
    x = _blocks(300, seed=4)
    means = [b.mean(0) for b in train._split_blocks(x)]
    weights = torch.rand(len(EMBEDDERS), generator=torch.Generator().manual_seed(2))
    weights /= weights.sum()
    teacher = train.teacher_vectors(x, means, weights)
    model = fusemoe.seeded(SMALL)
    train.initialise(model, x, means, weights, seed=3, principal=True)
    with torch.no_grad():
        fused = model(x).fused
    t = teacher @ teacher.T
    corr = np.corrcoef((fused @ fused.T).flatten().numpy(), t.flatten().numpy())[0, 1]
    assert corr > 0.99, corr
    # Prefixes keep more of the similarity than an equal share of the dimensions would.
    energy = (fused ** 2).sum(0)
    assert float(energy[:64].sum() / energy.sum()) > 64 / 300 * 2


def test_a_checkpoint_trained_with_other_settings_or_data_is_not_up_to_date(tmp_path):
    from dataclasses import asdict, replace

    cfg = train.TrainConfig()
    data = train.training_data(cfg).description
    on_dev = {**data, "sources": {**data["sources"], "paraphrase": "STS-B dev pairs"}}
    for name, settings, described, expected in [
            ("same", cfg, data, True), ("other", replace(cfg, teacher_power=2.0), data, False),
            ("dev", cfg, on_dev, False)]:
        fusemoe.save(fusemoe.seeded(SMALL), tmp_path / name, name,
                     extra={"train_config": asdict(settings), "data": described})
        assert train.trained_with(tmp_path / name, cfg) is expected, name


@pytest.mark.trained
def test_every_expert_carries_a_share_of_the_held_out_texts(repository, served_fusemoe):
    """On the texts of the pairs training held out, every expert of the served checkpoint
    takes at least 5 % of the routing mass (1/8 when even)."""
    model, manifest = fusemoe.load(served_fusemoe)
    cfg = train.TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in manifest.extra["train_config"].items()})
    data = train.training_data(cfg)
    x, _, _ = train.features(data, repository)
    order, held = train.pair_order(cfg, data)
    rows = np.unique(data.pairs[order[:held]])
    with torch.inference_mode():
        out = model(torch.from_numpy(x[rows]))
    mass = train.routing_mass(out, model.cfg.num_experts)
    assert min(mass) >= 0.05, f"{manifest.version}: routing mass per expert {mass}"


def test_a_partial_teacher_compares_two_inputs_by_the_blocks_they_have():
    x = _blocks(40, seed=6)
    means = [b.mean(0) for b in train._split_blocks(x)]
    weights = torch.rand(len(EMBEDDERS), generator=torch.Generator().manual_seed(3))
    weights /= weights.sum()
    presence = torch.ones(40, len(EMBEDDERS))
    presence[:20] = train.IMAGE_PRESENCE.float()
    t = train.partial_teacher(train.teacher_vectors(x, means, weights), presence)
    cos = [(a * b).sum(-1) for a, b in zip(train._split_blocks(train.centred_blocks(x, means)),
                                            train._split_blocks(train.centred_blocks(
                                                x.roll(1, 0), means)))]
    cos = torch.stack(cos, dim=-1)  # [40, 12]: per block, row i against row i - 1
    both = presence * presence.roll(1, 0)
    norm = (weights * presence).sum(-1).sqrt() * (weights * presence.roll(1, 0)).sum(-1).sqrt()
    want = (weights * both * cos).sum(-1) / norm
    torch.testing.assert_close((t * t.roll(1, 0)).sum(-1), want, atol=1e-5, rtol=1e-5)


def test_the_start_keeps_what_the_blocks_of_an_image_view_say():
    # Only the image blocks present, the rest filled with the training mean: the start's fused
    # cosines track the partial teacher's, with E10 weighted as little as the floor allows.
    x = _blocks(300, seed=4)
    means = [b.mean(0) for b in train._split_blocks(x)]
    d = torch.tensor([1.0 if e.id in ("E8", "E11") else 0.0 for e in EMBEDDERS])
    weights = d.clamp(min=0.02) / d.clamp(min=0.02).sum()
    model = fusemoe.seeded(SMALL)
    train.initialise(model, x, means, weights, seed=3, principal=True)
    with torch.no_grad():
        model.fill.copy_(torch.cat(means))
    presence = train.IMAGE_PRESENCE.float().expand(300, -1)
    teacher = train.partial_teacher(train.teacher_vectors(x, means, weights), presence)
    with torch.no_grad():
        fused = model(x, presence=presence).fused
    iu = torch.triu_indices(300, 300, 1)
    f, t = (fused @ fused.T)[iu[0], iu[1]], (teacher @ teacher.T)[iu[0], iu[1]]
    assert np.corrcoef(f.numpy(), t.numpy())[0, 1] > 0.9
    # Filled with zeros instead, the missing blocks' means pull every image view together.
    with torch.no_grad():
        model.fill.zero_()
        zeros = model(x, presence=presence).fused
    assert float((zeros @ zeros.T)[iu[0], iu[1]].mean()) > float(f.mean()) + 0.1


def test_the_weight_floor_keeps_every_block_and_sums_to_one():
    x = _blocks(300, seed=4, topics=1)
    pairs = np.stack([np.arange(150), np.arange(150) + 150], axis=1)
    means = [b.mean(0) for b in train._split_blocks(x)]
    w = train.block_weights(x, pairs, means, seed=0, floor=0.01)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert float(w.min()) >= 0.01 / (1 + 0.01 * len(EMBEDDERS)) - 1e-7


def test_the_image_map_moves_images_onto_the_texts_mean_and_spread():
    g = torch.Generator().manual_seed(3)
    text = torch.randn(500, 16, generator=g) * 0.2 + 1.0
    image = torch.randn(40, 16, generator=g) * 0.05 - 3.0
    scale, offset = train.fit_image_map(text, image)
    moved = image * scale + offset
    torch.testing.assert_close(moved.mean(0), text.mean(0))
    spread = lambda v: float((v - v.mean(0)).pow(2).sum(-1).mean().sqrt())
    assert spread(moved) == pytest.approx(spread(text), rel=1e-5)


def test_calibration_images_are_not_the_images_the_report_measures():
    """The map is fitted on matplotlib's sample images; perf.image_views measures
    scikit-image's: none of the measured images (or a tile of one) is a calibration image."""
    import hashlib
    import io

    from PIL import Image

    from perf import image_views

    calibration = train.calibration_images()
    assert len(calibration) >= 30
    measured = {hashlib.sha256(s.image.convert("RGB").tobytes()).hexdigest()
                for s in image_views.sample_images()[0]}
    for data in calibration:
        with Image.open(io.BytesIO(data)) as im:
            assert hashlib.sha256(im.convert("RGB").tobytes()).hexdigest() not in measured


def test_frozen_blocks_stay_out_of_the_output_through_training():
    """After freeze_columns and optimiser steps, changing a frozen block changes nothing."""
    model = fusemoe.seeded(SMALL)
    frozen = torch.tensor([e.id in ("E2", "E3") for e in EMBEDDERS])
    train.freeze_columns(model, frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        x = torch.randn(16, SMALL.input_dim, generator=g)
        loss = model(x).fused[:, 0].sum() + model.gate(x).max(-1).values.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(4, SMALL.input_dim, generator=g)
    moved = x.clone()
    columns = model._expand_blocks(frozen.float()) > 0
    moved[:, columns] = 0.0
    model.norm = torch.nn.Identity()  # the LayerNorm's statistics see every column
    with torch.inference_mode():
        torch.testing.assert_close(model(moved).fused, model(x).fused)
        other = x.clone()
        other[:, model._expand_blocks((~frozen).float()) > 0] = 0.0
        assert not torch.allclose(model(other).fused, model(x).fused, atol=1e-3)


def test_image_teacher_rows_keep_only_the_image_blocks_at_a_full_rows_norm():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(40, sum(e.dim for e in EMBEDDERS), generator=g)
    rows = train.image_teacher_rows(u, 0.25, seed=0)
    assert rows.shape == (10, u.shape[1])
    image = torch.repeat_interleave(train.IMAGE_PRESENCE,
                                    torch.tensor([e.dim for e in EMBEDDERS]))
    assert not rows[:, ~image].any() and rows[:, image].abs().min() > 0
    torch.testing.assert_close(rows.norm(dim=-1), u.norm(dim=-1).mean().expand(10))


def test_each_ablation_row_adds_one_change_and_the_last_is_make_trains():
    from dataclasses import asdict
    from itertools import pairwise

    from perf import fusion_ablation

    rows = fusion_ablation.variants()
    assert rows[-1][1] == train.TrainConfig()
    for (_, before), (name, after) in pairwise(rows):
        changed = {k for k, v in asdict(after).items() if asdict(before)[k] != v}
        assert len(changed) == 1, (name, changed)


def test_a_block_alone_is_scored_by_the_cosines_of_its_own_columns():
    from scipy.stats import spearmanr

    from perf import fusion_ablation

    rng = np.random.default_rng(0)
    dims = [e.dim for e in EMBEDDERS]
    x = rng.normal(size=(40, sum(dims))).astype(np.float32)
    first, second = np.arange(20), np.arange(20, 40)
    gold = rng.uniform(0, 5, 20)
    j = [e.id for e in EMBEDDERS].index("E6")
    start = sum(dims[:j])
    block = x[:, start:start + dims[j]]
    block = block / np.linalg.norm(block, axis=1, keepdims=True)
    expected = spearmanr((block[first] * block[second]).sum(-1), gold).statistic
    scores = fusion_ablation.block_scores({"dev": (x, first, second, gold)}, {"E6": "splade"})
    assert scores["E6"]["dev"] == pytest.approx(expected, abs=1e-6)
    other = fusion_ablation.block_scores({"dev": (x, first, second, gold)}, {"E11": "minilm"})
    assert other["E11"]["dev"] != pytest.approx(expected, abs=1e-6)
