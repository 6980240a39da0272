"""Train FuseMoE's gate and eight experts offline, on CPU (the GPU when present).

    python -m ensemble.train [--steps N] [--out checkpoints/fusemoe]

The twelve blocks of every training text come from the built repository through the
in-process pipeline (the same stages Triton serves), cached under ``.run/`` by a key of the
corpus and of every embedder's build. The objective, per batch of positive pairs:

- similarity preservation: the fused cosines of every pair in the batch track a teacher
  similarity, a weighted sum of the per-block cosines of centred, normalised blocks. A
  block's weight is how well it separates paraphrase and text <-> code pairs from random
  pairs (a d' statistic, clipped at 0, squared, normalised), so blocks that carry meaning
  dominate and blocks that carry noise fade;
- contrastive: InfoNCE of each anchor against its positive among the batch (paraphrases,
  docstring <-> source, augmented views, and masked views: the same text with random
  blocks missing, so the model works when embedders are missing);
- switch-style load balance (coef 0.01); capacity factor 1.25 and gate noise in training only.

The output is a versioned checkpoint (safetensors + manifest with sha256, config, data
description, metrics) and a report with loss curves and expert utilisation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ensemble import corpus, fusemoe
from export.build import embedder_fingerprints
from export.registry import EMBEDDERS, FUSEMOE, IMAGE_BLOCKS

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
CHECKPOINTS = ROOT / "checkpoints" / "fusemoe"
CACHE = ROOT / ".run" / "fusemoe-train"
REPORT = ROOT / "perf" / "reports" / "fusemoe-training"
BLOCK_DIMS = [e.dim for e in EMBEDDERS]
IMAGE_PRESENCE = torch.tensor([e.id in IMAGE_BLOCKS for e in EMBEDDERS])
TIME_RANGE = (0, 1_893_456_000)  # training timestamps: 1970 .. 2030, one per text
WEIGHT_SOURCES = ("paraphrase", "code")  # the pairs that set the teacher's block weights


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    pairs_per_step: int = 128  # a batch holds 2x this many rows
    lr: float = 3e-5  # experts: they start at the teacher's map (see initialise)
    gate_lr: float = 1e-5
    warmup_steps: int = 20
    weight_decay: float = 0.01
    similarity_weight: float = 1.0
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.05
    load_balance_coef: float = 0.01
    capacity_factor: float = 1.25
    gate_noise_std: float = 1.0
    block_drop: float = 0.3  # per-block probability of being missing in a masked view
    masked_share: float = 0.25  # share of a batch's pairs that are masked views
    # Share of the masked views that are image views: only the blocks an image fills
    # (IMAGE_BLOCKS) present, E10 being CLIP's text tower standing in for its image tower.
    image_views: float = 0.25
    code_pairs: int = 800
    augmented_pairs: int = 800
    holdout: float = 0.1  # share of pairs kept out of training to measure generalisation
    seed: int = 7
    eval_every: int = 10


@dataclass
class Data:
    texts: list[str]
    stamps: np.ndarray
    pairs: np.ndarray  # [P, 2] row indices into texts
    sources: list[str]  # per pair
    description: dict = field(default_factory=dict)


def training_data(cfg: TrainConfig) -> Data:
    sents = corpus.sentences("dev")
    pairs = (corpus.paraphrases("dev") + corpus.code_pairs(cfg.code_pairs, cfg.seed)
             + corpus.augmented_pairs(sents, cfg.augmented_pairs, cfg.seed))
    texts = list(dict.fromkeys(sents + [t for p in pairs for t in (p.first, p.second)]))
    index = {t: i for i, t in enumerate(texts)}
    rng = np.random.default_rng(cfg.seed)
    stamps = rng.integers(*TIME_RANGE, size=len(texts), dtype=np.int64)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.source] = counts.get(p.source, 0) + 1
    description = {
        "texts": len(texts), "sts_dev_sentences": len(sents), "pairs": counts,
        "sources": {
            "sentences": "STS Benchmark dev split (the test split is never read)",
            "paraphrase": f"STS-B dev pairs with gold score >= {corpus.PARAPHRASE_SCORE}",
            "code": "docstring summary <-> source, Python standard library "
                    f"{sys.version_info.major}.{sys.version_info.minor}, seeded sample",
            "augmented": "word dropout 0.15 + one neighbour swap of a dev sentence",
            "masked": "a text against itself with random blocks missing (in training)"},
        "timestamps": "uniform 1970..2030, one per text"}
    return Data(texts, stamps, np.array([[index[p.first], index[p.second]] for p in pairs]),
                [p.source for p in pairs], description)


def features(data: Data, repo: Path = REPOSITORY, batch: int = 32,
             ) -> tuple[np.ndarray, str, bool]:
    """[N, 8320] blocks of every text, computed once per corpus and build, then cached;
    with the cache key and whether the cache answered."""
    from ensemble.pipeline import Pipeline

    h = hashlib.sha256(json.dumps({"texts": data.texts, "stamps": data.stamps.tolist(),
                                   "builds": embedder_fingerprints(repo)}).encode())
    key = h.hexdigest()[:16]
    path = CACHE / f"features-{key}.npy"
    if path.is_file():
        return np.load(path), key, True
    out = Pipeline(repo).block_matrix(data.texts, data.stamps, batch)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out, key, False


def _split_blocks(x: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(x, BLOCK_DIMS, dim=-1))


def centred_blocks(x: torch.Tensor, means: list[torch.Tensor]) -> torch.Tensor:
    """Each block centred by its corpus mean and normalised, side by side: [N, 8320]."""
    return torch.cat([torch.nn.functional.normalize(b - m, dim=-1)
                      for b, m in zip(_split_blocks(x), means)], dim=-1)


def block_weights(x: torch.Tensor, pairs: np.ndarray, means: list[torch.Tensor],
                  seed: int) -> torch.Tensor:
    """d' of each block: (mean cosine of positive pairs - mean of random pairs) / std of
    random pairs; clipped at 0, squared, normalised to sum 1."""
    g = torch.Generator().manual_seed(seed)
    c = _split_blocks(centred_blocks(x, means))
    a, b = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    ra = torch.randint(0, x.shape[0], (4096,), generator=g)
    rb = torch.randint(0, x.shape[0], (4096,), generator=g)
    scores = []
    for block in c:
        pos = (block[a] * block[b]).sum(-1)
        rnd = (block[ra] * block[rb]).sum(-1)
        scores.append(float((pos.mean() - rnd.mean()) / (rnd.std() + 1e-6)))
    d = torch.tensor(scores).clamp(min=0.0) ** 2
    return d / d.sum()


def teacher_vectors(x: torch.Tensor, means: list[torch.Tensor], weights: torch.Tensor,
                    ) -> torch.Tensor:
    """Vectors whose dot products are the teacher similarity sum_b w_b cos_b."""
    scale = torch.repeat_interleave(weights.sqrt(), torch.tensor(BLOCK_DIMS, device=x.device))
    return centred_blocks(x, means) * scale


def load_balance(out: fusemoe.FusionOutput, num_experts: int) -> torch.Tensor:
    """Switch loss: E * sum_e (share of assignments to e) * (mean gate probability of e)."""
    counts = torch.bincount(out.selected_experts.reshape(-1).long(), minlength=num_experts)
    share = counts.float() / counts.sum()
    return num_experts * (share * out.expert_weights.mean(0)).sum()


@dataclass
class History:
    step: list[int] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)
    contrastive: list[float] = field(default_factory=list)
    balance: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_teacher_corr: list[float] = field(default_factory=list)
    eval_pair_accuracy: list[float] = field(default_factory=list)
    utilisation: list[list[float]] = field(default_factory=list)  # per eval, share per expert


def evaluate(model: fusemoe.FuseMoE, x: torch.Tensor, teacher: torch.Tensor,
             pairs: np.ndarray, seed: int) -> tuple[float, float, list[float]]:
    """On held-out pairs: correlation of fused and teacher cosines over random and positive
    pairs, the share of positives closer than a random partner, and expert shares."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(np.unique(pairs))
    model.eval()
    with torch.inference_mode():
        out = model(x[rows])
    fused = dict(zip(rows.tolist(), out.fused))
    a = torch.stack([fused[int(i)] for i in pairs[:, 0]])
    b = torch.stack([fused[int(i)] for i in pairs[:, 1]])
    perm = torch.randperm(len(pairs), generator=g)
    pos, rnd = (a * b).sum(-1), (a * b[perm]).sum(-1)
    ta, tb = teacher[pairs[:, 0]], teacher[pairs[:, 1]]
    tpos, trnd = (ta * tb).sum(-1), (ta * tb[perm]).sum(-1)
    corr = float(np.corrcoef(torch.cat([pos, rnd]).cpu().numpy(),
                             torch.cat([tpos, trnd]).cpu().numpy())[0, 1])
    acc = float((pos > rnd).float().mean())
    counts = torch.bincount(out.selected_experts.reshape(-1).long(), minlength=FUSEMOE.num_experts)
    model.train()
    return corr, acc, (counts.float() / counts.sum()).tolist()


def evaluate_image_views(model: fusemoe.FuseMoE, x: torch.Tensor, pairs: np.ndarray,
                         seed: int) -> tuple[float, float]:
    """On held-out texts: the mean cosine of a text's image view (only IMAGE_BLOCKS present)
    to its full fused vector, and the share of texts whose image view is closer to its own
    full vector than to a random other text's."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(np.unique(pairs))
    presence = IMAGE_PRESENCE.float().to(x.device).expand(len(rows), -1)
    model.eval()
    with torch.inference_mode():
        full = model(x[rows]).fused
        image = model(x[rows], presence=presence).fused
    model.train()
    own = (image * full).sum(-1)
    other = (image * full[torch.randperm(len(rows), generator=g)]).sum(-1)
    return float(own.mean()), float((own > other).float().mean())


def train(cfg: TrainConfig, x_np: np.ndarray, data: Data, log=print,
          ) -> tuple[fusemoe.FuseMoE, History, dict]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(x_np).to(device)
    order = rng.permutation(len(data.pairs))
    n_hold = int(len(order) * cfg.holdout)
    held, used = data.pairs[order[:n_hold]], data.pairs[order[n_hold:]]
    train_rows = np.setdiff1d(np.arange(len(data.texts)), np.unique(held))
    means = [b.mean(0) for b in _split_blocks(x[torch.from_numpy(train_rows)])]
    # Block weights from the semantic pairs only: augmented views (dropped words) look alike
    # to any bag-of-words encoder, so they say nothing about which block carries meaning.
    semantic = np.isin(np.array(data.sources)[order[n_hold:]], WEIGHT_SOURCES)
    weights = block_weights(x, used[semantic], means, cfg.seed)
    teacher = teacher_vectors(x, means, weights)
    log("teacher block weights: " + ", ".join(
        f"{e.id} {w:.3f}" for e, w in zip(EMBEDDERS, weights.tolist())))

    model = fusemoe.seeded().to(device)
    initialise(model, x[torch.from_numpy(train_rows)], means, weights.to(device), cfg.seed)
    model.train()
    # Adam moves every weight by about lr per step whatever its gradient: over 8320 inputs a
    # large rate saturates the gate within tens of steps (routing collapses onto two experts)
    # and throws the experts far from their initial map.
    gate = [p for n, p in model.named_parameters() if not n.startswith("experts.")]
    experts = [p for n, p in model.named_parameters() if n.startswith("experts.")]
    opt = torch.optim.AdamW([{"params": experts, "lr": cfg.lr},
                             {"params": gate, "lr": cfg.gate_lr}],
                            weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps)
                                              * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    hist = History()
    start = time.perf_counter()

    def record(step: int) -> None:
        corr, acc, share = evaluate(model, x, teacher, held, cfg.seed)
        hist.eval_step.append(step)
        hist.eval_teacher_corr.append(corr)
        hist.eval_pair_accuracy.append(acc)
        hist.utilisation.append(share)
        log(f"step {step}/{cfg.steps}  held-out: teacher corr {corr:.3f} pos>random {acc:.3f}  "
            f"{time.perf_counter() - start:.0f} s")

    record(0)
    n_masked = int(cfg.pairs_per_step * cfg.masked_share)
    for step in range(cfg.steps):
        p = used[rng.integers(0, len(used), cfg.pairs_per_step - n_masked)]
        solo = rng.choice(train_rows, n_masked)
        first = torch.from_numpy(np.concatenate([p[:, 0], solo]))
        second = torch.from_numpy(np.concatenate([p[:, 1], solo]))
        rows = torch.cat([first, second])
        presence = torch.ones(len(rows), len(EMBEDDERS))
        # Masked views: the second copy of each solo text loses random blocks (never all);
        # image views keep only the blocks fused_image fills.
        drop = torch.rand(n_masked, len(EMBEDDERS)) < cfg.block_drop
        drop[drop.all(1), 0] = False
        drop[:int(n_masked * cfg.image_views)] = ~IMAGE_PRESENCE
        presence[len(rows) - n_masked:] = (~drop).float()
        out = model(x[rows], presence=presence.to(device), noise_std=cfg.gate_noise_std,
                    capacity_factor=cfg.capacity_factor)
        f = out.fused
        t = teacher[rows]
        sim = ((f @ f.T - t @ t.T) ** 2).mean()
        n = len(first)
        logits = (f[:n] @ f[n:].T) / cfg.contrastive_temperature
        target = torch.arange(n, device=device)
        con = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                     + torch.nn.functional.cross_entropy(logits.T, target))
        bal = load_balance(out, FUSEMOE.num_experts)
        loss = (cfg.similarity_weight * sim + cfg.contrastive_weight * con
                + cfg.load_balance_coef * bal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        hist.step.append(step)
        hist.total.append(float(loss.detach()))
        hist.similarity.append(float(sim.detach()))
        hist.contrastive.append(float(con.detach()))
        hist.balance.append(float(bal.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            log(f"  loss {hist.total[-1]:.4f} (similarity {hist.similarity[-1]:.4f}, "
                f"contrastive {hist.contrastive[-1]:.3f}, balance {hist.balance[-1]:.3f})")
            record(step + 1)
    image_cosine, image_accuracy = evaluate_image_views(model, x, held, cfg.seed)
    model.eval().cpu()
    metrics = {"device": str(device), "held_out_image_view_cosine": image_cosine,
               "held_out_image_view_closer_than_random": image_accuracy, "held_out_teacher_correlation": hist.eval_teacher_corr[-1],
               "held_out_positive_over_random": hist.eval_pair_accuracy[-1],
               "expert_share": hist.utilisation[-1],
               "teacher_block_weights": dict(zip([e.id for e in EMBEDDERS],
                                                 weights.tolist())),
               "train_seconds": time.perf_counter() - start,
               "held_out_pairs": int(n_hold)}
    return model, hist, metrics


def initialise(model: fusemoe.FuseMoE, x: torch.Tensor, means: list[torch.Tensor],
               weights: torch.Tensor, seed: int, offset: float = 8.0) -> None:
    """Data-dependent start for training (the architecture is unchanged).

    - Every expert starts as the same random linear map of the teacher vector: fc1 sends
      u = D (x - mean) (each block scaled by sqrt(w_b) over its mean centred norm, so
      u . v ~ teacher similarity) through a Gaussian matrix G, shifted by ``offset`` so SiLU
      works in its linear range (SiLU(h) = h sigmoid(h), sigmoid(8) = 0.9997); fc2 is a
      Gaussian H and removes the shift. H G u is a Johnson-Lindenstrauss projection of u to
      1536-D: fused cosines start at the teacher's, and training refines from there.
    - Upcycling: the experts are copies, so texts routed to different experts share one
      output space from the first step; they specialise as their gradients differ.
    - The gate's first layer sees centred input (bias -= W @ mean): the blocks share a large
      common direction, and without this every text routes alike.
    """
    g = torch.Generator().manual_seed(seed)
    mu = torch.cat(means)
    norms = [b.norm(dim=-1).mean() for b in _split_blocks(x - mu)]
    d = torch.cat([torch.full((dim,), float(w.sqrt() / n))
                   for dim, w, n in zip(BLOCK_DIMS, weights, norms)]).to(x.device)
    hidden, out = model.cfg.expert_hidden, model.cfg.output_dim
    scale = 0.5  # std of G u: keeps offset + G u within SiLU's linear range
    G = (torch.randn(hidden, x.shape[1], generator=g) * scale).to(x.device)
    H = (torch.randn(out, hidden, generator=g) / hidden ** 0.5).to(x.device)
    with torch.no_grad():
        first = model.experts[0]
        first.fc1.weight.copy_(G * d)
        first.fc1.bias.copy_(offset - G @ (d * mu))
        first.fc2.weight.copy_(H)
        first.fc2.bias.copy_(-offset * H.sum(1))
        state = first.state_dict()
        for expert in model.experts[1:]:
            expert.load_state_dict(state)
        model.gate_fc1.bias -= model.gate_fc1.weight @ model.norm(x).mean(0)


def version_name(cfg: TrainConfig, feature_key: str) -> str:
    digest = hashlib.sha256(json.dumps([asdict(cfg), feature_key]).encode()).hexdigest()[:8]
    return f"trained-{datetime.now(UTC).strftime('%Y%m%d')}-{digest}"


def plot(hist: History, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("total", "similarity", "contrastive", "balance"):
        values = np.array(getattr(hist, name))
        smooth = np.convolve(values, np.ones(10) / 10, mode="valid")
        axes[0].plot(hist.step[len(hist.step) - len(smooth):], smooth, label=name)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training losses (10-step mean)")
    axes[0].legend()
    axes[1].plot(hist.eval_step, hist.eval_teacher_corr, marker="o", label="teacher correlation")
    axes[1].plot(hist.eval_step, hist.eval_pair_accuracy, marker="o",
                 label="positive closer than random")
    axes[1].set_xlabel("step")
    axes[1].set_title("held-out pairs")
    axes[1].legend()
    fig.tight_layout()
    losses = directory / "losses.png"
    fig.savefig(losses, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    share = np.array(hist.utilisation)
    for e in range(share.shape[1]):
        ax.plot(hist.eval_step, share[:, e], marker=".", label=f"expert {e}")
    ax.axhline(1 / share.shape[1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("share of top-k assignments")
    ax.set_title("expert utilisation on held-out texts")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    util = directory / "expert-utilisation.png"
    fig.savefig(util, dpi=110)
    plt.close(fig)
    return [losses, util]


def write_report(cfg: TrainConfig, data: Data, metrics: dict, version: str, seconds: float,
                 blocks_seconds: float, cached: bool, directory: Path = REPORT) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    w = metrics["teacher_block_weights"]
    lines = [
        f"# FuseMoE training: {version}", "",
        (f"Command: `python -m ensemble.train` (`make train`). Wall time {seconds / 60:.1f} min "
         f"on this machine: blocks of the corpus {blocks_seconds / 60:.1f} min"
         f"{' (from the cache of an earlier run)' if cached else ''}, training "
         f"{metrics['train_seconds'] / 60:.1f} min; torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads, {metrics['device']}."), "",
        "## Method", "",
        ("Teacher: per-block cosines of centred, normalised blocks, weighted by each block's "
         "d' (paraphrase and text <-> code pairs against random pairs; clipped at 0, squared, "
         "normalised). Start (`initialise`): every expert is the same random linear map of "
         "the weighted, centred blocks (SiLU in its linear range), so fused cosines start at "
         "the teacher's (step 0 below); the gate's first layer sees centred input. Loss per "
         "batch of 128 pairs: similarity preservation (MSE of all fused cosines in the batch "
         "against the teacher) + contrastive InfoNCE on the positives (weight "
         f"{cfg.contrastive_weight}, temperature {cfg.contrastive_temperature}) + switch "
         f"load balance ({cfg.load_balance_coef}); capacity factor {cfg.capacity_factor} and "
         f"gate noise (std {cfg.gate_noise_std}) in training only. A quarter of each batch "
         f"are masked views (each block missing with probability {cfg.block_drop}); "
         f"{cfg.image_views:.0%} of those are image views, with only "
         f"{', '.join(IMAGE_BLOCKS)} present (what fused_image fuses)."), "",
        "## Data", "",
        f"{data.description['texts']} texts; pairs: "
        + ", ".join(f"{k} {v}" for k, v in data.description["pairs"].items())
        + f"; {metrics['held_out_pairs']} pairs held out.", ""]
    lines += [f"- {k}: {v}" for k, v in data.description["sources"].items()]
    lines += ["", "## Teacher block weights (d' on training pairs)", "",
              "| " + " | ".join(w) + " |", "|" + "---|" * len(w),
              "| " + " | ".join(f"{v:.3f}" for v in w.values()) + " |", "",
              "## Held-out metrics", "",
              f"- fused vs teacher cosine correlation: {metrics['held_out_teacher_correlation']:.3f}",
              (f"- positive pair closer than a random partner: "
              f"{metrics['held_out_positive_over_random']:.3f}"),
              "- expert share of top-k assignments: "
              + ", ".join(f"{s:.3f}" for s in metrics["expert_share"]),
              (f"- image views (only {', '.join(IMAGE_BLOCKS)} present, what fused_image "
               f"fuses; E10 from CLIP's text tower): cosine to the text's full vector "
               f"{metrics['held_out_image_view_cosine']:.3f}, closer to it than to a random "
               f"text's {metrics['held_out_image_view_closer_than_random']:.3f}"), "",
              "## Settings", "", "```json", json.dumps(asdict(cfg), indent=2), "```", "",
              "![losses](losses.png)", "", "![expert utilisation](expert-utilisation.png)", ""]
    path = directory / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--out", type=Path, default=CHECKPOINTS,
                        help="the checkpoint goes to OUT/<version>/")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when a checkpoint for this build's blocks exists")
    args = parser.parse_args(argv)
    if args.if_missing:
        from export.build import trained_checkpoint

        found = trained_checkpoint(args.repository, args.out)
        if found is not None:
            print(f"FuseMoE checkpoint for these blocks: {found} (up to date)")
            return 0
    cfg = TrainConfig(steps=args.steps)
    start = time.perf_counter()
    data = training_data(cfg)
    print(f"{len(data.texts)} texts, {len(data.pairs)} pairs: {data.description['pairs']}")
    blocks_start = time.perf_counter()
    x, key, cached = features(data, args.repository)
    blocks_seconds = time.perf_counter() - blocks_start
    model, hist, metrics = train(cfg, x, data)
    version = version_name(cfg, key)
    directory = args.out / version
    manifest = fusemoe.save(model, directory, version, extra={
        "init": "trained", "trained": True, "train_config": asdict(cfg),
        "data": data.description, "metrics": metrics, "features_key": key,
        "embedder_fingerprints": embedder_fingerprints(args.repository),
        "created": datetime.now(UTC).isoformat(timespec="seconds")})
    plot(hist, args.report)
    path = write_report(cfg, data, metrics, version, time.perf_counter() - start,
                        blocks_seconds, cached, args.report)
    print(f"checkpoint: {directory} (sha256 {manifest.sha256[:12]}...)")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
