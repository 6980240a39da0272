"""FuseMoE: a top-k mixture of experts that fuses the 8320-D concatenation into 1536-D.

Gate: LayerNorm(8320) -> Linear 8320->2048 -> GELU -> Linear 2048->8 (+ log-priors)
-> softmax(z / T) -> top-k -> kept weights renormalised to 1. Expert: Linear 8320->4096,
SiLU, Linear 4096->1536. Output: sum of the kept experts' outputs by weight, then L2.

A missing block (presence 0: an image's text blocks, the fail-safe's failed embedder) is
replaced by ``fill``, the block's mean over the training texts, so it says "nothing known"
rather than pulling every partial input toward the same point; the seeded model and
checkpoints trained before ``fill`` existed hold zeros there (the input they were trained
with).

E10 of an image (fused_image) comes from CLIP's vision tower, whose vectors lie apart from
its text tower's (the modality gap: with the seeded towers every image sits at cosine 0.86
to every other, far from the texts' mean). Rows marked ``from_image`` have their E10 mapped
by ``image_scale`` and ``image_offset`` (fitted in training on calibration images: the
images' mean onto the texts' mean, their spread onto the texts' spread), so the experts see
an image where they learnt E10; the identity (1, 0) in the seeded model and in checkpoints
from before it existed.

Experts run grouped across the batch: each expert sees, in one matmul, every row that
selected it. Inference never drops a row (no capacity limit outside training).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ensemble.validation import GateControls
from export.artifacts import ArtifactError, Manifest, manifest_path, sha256_file, verified
from export.layout import FUSEMOE_STEM
from export.registry import FUSEMOE, FuseMoEConfig, block_offsets

WEIGHTS_STEM = FUSEMOE_STEM
SEEDED_VERSION = "seeded-init-1"


@dataclass(frozen=True)
class FusionOutput:
    fused: torch.Tensor  # [B, 1536], unit norm
    expert_weights: torch.Tensor  # [B, 8], gate probabilities, sum 1
    selected_experts: torch.Tensor  # [B, k], int32, by descending weight

    def to(self, device: str | torch.device) -> FusionOutput:
        return FusionOutput(self.fused.to(device), self.expert_weights.to(device),
                            self.selected_experts.to(device))


class Expert(nn.Module):
    def __init__(self, cfg: FuseMoEConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.input_dim, cfg.expert_hidden)
        self.fc2 = nn.Linear(cfg.expert_hidden, cfg.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.silu(self.fc1(x)))


class FuseMoE(nn.Module):
    def __init__(self, cfg: FuseMoEConfig = FUSEMOE) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.input_dim, eps=cfg.layer_norm_eps)
        self.gate_fc1 = nn.Linear(cfg.input_dim, cfg.gate_hidden)
        self.gate_fc2 = nn.Linear(cfg.gate_hidden, cfg.num_experts)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_experts))
        self.register_buffer("fill", torch.zeros(cfg.input_dim))
        start, end = block_offsets()["E10"]
        self.image_block = (start, end)
        self.register_buffer("image_scale", torch.ones(()))
        self.register_buffer("image_offset", torch.zeros(end - start))

    def gate(self, x: torch.Tensor, temperature: torch.Tensor | float | None = None,
             noise_std: float = 0.0) -> torch.Tensor:
        """Gate probabilities [B, num_experts] before top-k; ``temperature`` is a scalar or
        one value per row; ``noise_std`` adds Gaussian noise to the logits (training only)."""
        z = self.gate_fc2(nn.functional.gelu(self.gate_fc1(self.norm(x))))
        if noise_std:
            z = z + noise_std * torch.randn_like(z)
        t = self.cfg.temperature if temperature is None else temperature
        if isinstance(t, torch.Tensor):
            t = t.reshape(-1, 1).to(z.dtype)
        return torch.softmax(z / t, dim=-1)

    def forward(self, x: torch.Tensor, presence: torch.Tensor | None = None,
                top_k: torch.Tensor | int | None = None,
                temperature: torch.Tensor | float | None = None,
                focus: torch.Tensor | None = None, noise_std: float = 0.0,
                capacity_factor: float | None = None,
                from_image: torch.Tensor | None = None) -> FusionOutput:
        """x: [B, 8320] concatenated blocks. Optional, per row: presence [B, 12] (0 = block
        missing: ``fill`` whatever x holds), focus [B, 12] (non-negative multipliers of the
        blocks before gating), top_k [B] (1..num_experts), temperature [B], from_image [B]
        (E10 from the image tower: mapped as the class docstring says).

        ``noise_std`` and ``capacity_factor`` are for training: inference never drops a row.
        ``selected_experts`` has as many columns as the largest top-k; a row with a smaller
        top-k is padded with -1.
        """
        if from_image is not None and bool(from_image.any()):
            start, end = self.image_block
            e10 = x[:, start:end]
            mapped = e10 * self.image_scale.to(x.dtype) + self.image_offset.to(x.dtype)
            x = torch.cat([x[:, :start], torch.where(from_image.reshape(-1, 1).bool(), mapped, e10),
                           x[:, end:]], dim=1)
        if presence is not None:
            x = torch.where(self._expand_blocks(presence) > 0, x, self.fill.to(x.dtype))
        if focus is not None:
            x = x * self._expand_blocks(focus.to(x.dtype))
        rows_k = self._per_row_k(top_k, x.shape[0], x.device)
        probs = self.gate(x, temperature, noise_std)
        kmax = int(rows_k.max())
        kept, idx = torch.topk(probs, kmax, dim=-1)  # descending
        valid = torch.arange(kmax, device=x.device) < rows_k.unsqueeze(1)
        kept = torch.where(valid, kept, torch.zeros_like(kept))
        kept = kept / kept.sum(dim=-1, keepdim=True)
        routed = valid
        if capacity_factor is not None:
            valid = valid & self._within_capacity(idx, kept, valid, capacity_factor)
        out = x.new_zeros(x.shape[0], self.cfg.output_dim)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero((idx == e) & valid, as_tuple=True)
            if rows.numel() == 0:
                continue
            out.index_add_(0, rows, expert(x[rows]) * kept[rows, slot].unsqueeze(-1))
        fused = nn.functional.normalize(out, p=2.0, dim=-1)
        selected = torch.where(routed, idx, torch.full_like(idx, -1))
        return FusionOutput(fused, probs, selected.to(torch.int32))

    def _per_row_k(self, top_k: torch.Tensor | int | None, rows: int,
                   device: torch.device) -> torch.Tensor:
        k = self.cfg.top_k if top_k is None else top_k
        if isinstance(k, torch.Tensor):
            return k.reshape(-1).to(device=device, dtype=torch.long)
        return torch.full((rows,), int(k), dtype=torch.long, device=device)

    def _within_capacity(self, idx: torch.Tensor, kept: torch.Tensor, valid: torch.Tensor,
                         factor: float) -> torch.Tensor:
        """Training only: each expert takes at most factor * assignments / experts rows, by
        descending gate weight; the assignments over capacity are dropped."""
        capacity = math.ceil(factor * int(valid.sum()) / self.cfg.num_experts)
        keep = torch.zeros_like(valid)
        for e in range(self.cfg.num_experts):
            rows, slot = torch.nonzero((idx == e) & valid, as_tuple=True)
            if rows.numel() > capacity:
                best = torch.topk(kept[rows, slot].detach(), capacity).indices
                rows, slot = rows[best], slot[best]
            keep[rows, slot] = True
        return keep

    def _expand_blocks(self, per_block: torch.Tensor) -> torch.Tensor:
        from export.registry import EMBEDDERS

        dims = torch.tensor([e.dim for e in EMBEDDERS], device=per_block.device)
        return torch.repeat_interleave(per_block, dims, dim=-1)


def fuse(model: FuseMoE, x: torch.Tensor, controls: GateControls) -> FusionOutput:
    """Inference with validated per-item gate controls (what the served model and the
    reference pipeline both run), on ``x``'s device."""
    with torch.inference_mode():
        return model(x, presence=torch.from_numpy(controls.presence).float().to(x.device),
                     top_k=torch.from_numpy(controls.top_k).to(x.device),
                     temperature=torch.from_numpy(controls.temperature).to(x.device),
                     focus=torch.from_numpy(controls.focus).to(x.device),
                     from_image=torch.from_numpy(controls.from_image).to(x.device))


@dataclass(frozen=True)
class Outputs:
    """What a checkpoint offers besides the full float vector: its Matryoshka prefixes
    (manifest "dimensions"; the full size only without them) and the int8 scale of each
    (manifest "int8_scale"; no int8 without it)."""

    dimensions: tuple[int, ...]
    int8_scale: dict[int, np.ndarray]

    @classmethod
    def of(cls, manifest: Manifest, cfg: FuseMoEConfig = FUSEMOE) -> Outputs:
        dims = tuple(int(d) for d in manifest.extra.get("dimensions", [cfg.output_dim]))
        scales = {int(d): np.asarray(v, dtype=np.float32)
                  for d, v in manifest.extra.get("int8_scale", {}).items()}
        return cls(dims, scales)

    def manifest_fields(self) -> dict:
        return {"dimensions": list(self.dimensions),
                "int8_scale": {str(d): [float(x) for x in v]
                               for d, v in self.int8_scale.items()}}


def seeded(cfg: FuseMoEConfig = FUSEMOE) -> FuseMoE:
    """The deterministic initialisation used when no trained checkpoint exists."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = FuseMoE(cfg)
    return model.eval()


def save(model: FuseMoE, directory: Path, version: str, extra: dict | None = None) -> Manifest:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{WEIGHTS_STEM}.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(data), metadata={"version": version})
    info = {"config": asdict(model.cfg)} | (extra or {})
    manifest = Manifest(version, sha256_file(data), data.name, json.loads(json.dumps(info)))
    manifest.write(manifest_path(directory, WEIGHTS_STEM))
    return manifest


def load(directory: Path, cfg: FuseMoEConfig = FUSEMOE,
         precision: str | None = None) -> tuple[FuseMoE, Manifest]:
    """Load verified weights; a checksum or shape mismatch is an ``ArtifactError``.

    ``precision`` ``int8`` quantizes the experts' Linear layers after the FP32 weights were
    verified; the gate stays FP32: INT8 gate logits switch the top-k experts of rows whose
    gate probabilities are close, and such a row's fused vector then changes entirely
    (tests/unit/test_precision.py). None takes the precision the build recorded in the
    folder's build.json (fp32 when there is none, as in a checkpoint folder)."""
    from safetensors.torch import load_file

    from export.layout import BUILD_INFO
    from export.precision import quantize_torch_int8

    data, manifest = verified(directory, WEIGHTS_STEM)
    model = FuseMoE(cfg)
    tensors = load_file(str(data))
    # Checkpoints from before ``fill`` existed were trained with missing blocks as zeros.
    tensors.setdefault("fill", torch.zeros(cfg.input_dim))
    # And before the image map existed, with E10 of an image as the tower gave it.
    tensors.setdefault("image_scale", torch.ones(()))
    tensors.setdefault("image_offset", model.image_offset.clone())
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{data}: weights do not fit FuseMoE {cfg}: {err}") from err
    if precision is None:
        info = directory / BUILD_INFO
        precision = json.loads(info.read_text()).get("precision", "fp32") if info.is_file() \
            else "fp32"
    if precision == "int8":
        model.experts = quantize_torch_int8(model.experts.eval())
    elif precision != "fp32":
        raise ArtifactError(f"{directory}: FuseMoE runs in fp32 or int8, not {precision}")
    return model.eval(), manifest


def install(checkpoint: Path, directory: Path) -> tuple[Path, Manifest]:
    """Copy a verified checkpoint (weights + manifest) into a model version folder."""
    import shutil

    data, _manifest = verified(checkpoint, WEIGHTS_STEM)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data, directory / data.name)
    shutil.copyfile(manifest_path(checkpoint, WEIGHTS_STEM), manifest_path(directory, WEIGHTS_STEM))
    return verified(directory, WEIGHTS_STEM)
