"""fused_image: an encoded image and its TIMESTAMP (E4's SESSION and SEQUENCE optional) ->
FUSED, through the models fused_text runs.

The image is decoded and prepared here (ensemble/images.py: CLIP's processor), embedded by
E10's vision tower (e10_image, batched across requests) while E2, E3 and E4 embed the time;
FuseMoE fuses them with the text blocks missing (its presence mask and fill, as the
fail-safe fuses without a block) and E10 marked as the image tower's (FROM_IMAGE).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ensemble.images import prepare
from ensemble.serving.base import (
    BlsAdapter,
    RequestError,
    input_array,
    optional_array,
)
from ensemble.serving.failsafe import call
from ensemble.validation import InvalidInput, Validator
from export.registry import (
    BLOCK_SUFFIX,
    EMBEDDERS,
    EMBEDDING,
    EXPERT_WEIGHTS,
    FROM_IMAGE,
    FUSED,
    FUSEMOE_MODEL,
    FUSION_VERSION,
    IMAGE,
    IMAGE_BLOCKS,
    IMAGE_EMBEDDER_MODEL,
    PIXELS,
    PRESENCE,
    SELECTED_EXPERTS,
    SEQUENCE,
    SESSION,
    TIMESTAMP,
    TRUNCATED_SUFFIX,
    Input,
    Limits,
    embedder,
)

E10 = embedder("E10")
# Requests decoded at once: a 40-megapixel image is 120 MB of RGB, so decoding is bounded
# apart from how many requests wait.
DECODERS = 2


class TritonPythonModel(BlsAdapter):
    def setup(self) -> None:
        self.validator = Validator(Limits.from_parameters(self.params))
        self.decoders = ThreadPoolExecutor(DECODERS, thread_name_prefix="decode")

    def _read(self, request) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixels, timestamps, sessions and positions of a valid request."""
        images = input_array(request, IMAGE).reshape(-1)
        v = self.validator
        try:
            stamps, sessions, positions = v.times(
                len(images), input_array(request, TIMESTAMP), optional_array(request, SESSION),
                optional_array(request, SEQUENCE), "images")
            pixels = np.stack([prepare(bytes(x) if not isinstance(x, bytes) else x,
                                       f"{IMAGE}[{i}]", v.limits)
                               for i, x in enumerate(images)])
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        session_bytes = np.array([[s.encode("utf-8")] for s in sessions], dtype=np.object_)
        return pixels, stamps.reshape(-1, 1), session_bytes, positions.reshape(-1, 1)

    async def run(self, request):
        # Decoding runs beside the event loop (Pillow releases the GIL while it decodes).
        pixels, stamps, sessions, positions = await asyncio.get_running_loop().run_in_executor(
            self.decoders, self._read, request)
        rows = len(pixels)
        blocks = dict(zip(IMAGE_BLOCKS, await asyncio.gather(
            call(embedder("E2").triton_model, {TIMESTAMP: stamps}, [EMBEDDING]),
            call(embedder("E3").triton_model, {TIMESTAMP: stamps}, [EMBEDDING]),
            call(embedder("E4").triton_model, {TIMESTAMP: positions, SESSION: sessions},
                 [EMBEDDING]),
            call(IMAGE_EMBEDDER_MODEL, {PIXELS: pixels}, [EMBEDDING]))))
        fuse_inputs: dict[str, np.ndarray] = {}
        for spec in EMBEDDERS:
            fuse_inputs[spec.block_name] = (
                blocks[spec.id][EMBEDDING] if spec.id in blocks
                else np.zeros((rows, spec.dim), dtype=np.float32))
            if spec.input is Input.TOKENS:
                fuse_inputs[spec.block_name + TRUNCATED_SUFFIX] = np.zeros((rows, 1), dtype=bool)
        fuse_inputs[PRESENCE] = np.tile([s.id in IMAGE_BLOCKS for s in EMBEDDERS], (rows, 1))
        fuse_inputs[FROM_IMAGE] = np.ones((rows, 1), dtype=bool)
        fused = await call(FUSEMOE_MODEL, fuse_inputs, [
            FUSED, EXPERT_WEIGHTS, SELECTED_EXPERTS, FUSION_VERSION, E10.block_name + BLOCK_SUFFIX])
        e10 = fused.pop(E10.block_name + BLOCK_SUFFIX)
        return self.response(fused | {E10.block_name: e10})
