"""fused_image's preprocessing against transformers' CLIP image processor, its limits and
errors, and E10's vision tower against CLIPModel.get_image_features on the built weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ensemble.images import ImageError, decode, prepare
from ensemble.stages import ImageEmbedder, version_dir
from export.registry import IMAGE_EMBEDDER_MODEL, LIMITS, embedder


@pytest.fixture(scope="module")
def processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth gradient with noise (what resampling and JPEG meet in photos)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width, 1), y * 255 / max(height, 1),
                     (x + y) * 127 / max(width + height, 1)], axis=-1)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        image.putalpha(alpha)
        return image
    if mode == "P":
        return image.quantize(64)
    return image.convert(mode)


CASES = [
    (640, 480, "RGB", "PNG"), (480, 640, "RGB", "JPEG"), (224, 224, "RGB", "WEBP"),
    (1, 1, "RGB", "PNG"), (3, 200, "RGB", "BMP"), (300, 7, "L", "PNG"), (1023, 517, "RGB", "JPEG"),
    (225, 224, "RGBA", "PNG"), (50, 80, "RGBA", "WEBP"), (97, 61, "P", "GIF"), (97, 61, "P", "PNG"),
    (120, 90, "LA", "PNG"), (64, 48, "1", "BMP"), (128, 96, "CMYK", "JPEG"), (333, 250, "L", "JPEG"),
]


@pytest.mark.parametrize("width,height,mode,fmt", CASES,
                         ids=[f"{w}x{h}-{m}-{f}" for w, h, m, f in CASES])
def test_preparation_equals_clips_image_processor(processor, width, height, mode, fmt):
    """Decoded by Pillow as a user would open the file, then the processor: the same pixels
    within 1e-4 (sizes, modes and formats of every kind accepted)."""
    data = encoded(picture(width, height, mode), fmt)
    expected = processor(Image.open(io.BytesIO(data)), return_tensors="np")["pixel_values"][0]
    actual = prepare(data)
    assert actual.shape == (3, 224, 224) and actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= 1e-4


def test_transparency_is_composited_on_white_as_the_processor_does(processor):
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    data = encoded(clear, "PNG")
    white = prepare(encoded(Image.new("RGB", (40, 40), (255, 255, 255)), "PNG"))
    np.testing.assert_allclose(prepare(data), white, atol=1e-6)


def test_exif_orientation_is_applied(processor):
    """A JPEG whose EXIF says "rotate 90° clockwise to view": prepared upright, as the
    processor prepares the transposed image, unlike the stored pixels."""
    image = picture(320, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image, "JPEG", exif=exif, quality=95)
    opened = Image.open(io.BytesIO(data))
    upright = processor(ImageOps.exif_transpose(opened), return_tensors="np")["pixel_values"][0]
    stored = processor(Image.open(io.BytesIO(data)), return_tensors="np")["pixel_values"][0]
    assert decode(data).size == (200, 320)
    assert np.abs(prepare(data) - upright).max() <= 1e-4
    assert np.abs(prepare(data) - stored).max() > 0.5


def test_sixteen_bit_greyscale_is_scaled_not_clipped(processor):
    levels = picture(90, 70, "L")
    wide = Image.fromarray(np.asarray(levels, dtype=np.uint16) * 257)
    data = encoded(wide, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    expected = processor(levels, return_tensors="np")["pixel_values"][0]
    assert np.abs(prepare(data) - expected).max() <= 1e-4


def test_gif_uses_its_first_frame():
    frames = [picture(60, 40, seed=s).quantize(32) for s in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    first = prepare(encoded(frames[0], "GIF"))
    np.testing.assert_allclose(prepare(out.getvalue()), first, atol=1e-6)


def bomb() -> bytes:
    """A 10000 x 10000 bilevel PNG: a few KB that would decode to 100 million pixels."""
    return encoded(Image.new("1", (10_000, 10_000)), "PNG")


@pytest.mark.parametrize("data,message", [
    (b"", r"IMAGE\[0\]: empty \(0 bytes\)"),
    (b"GIF89a not really", (r"IMAGE\[0\]: not an image in an accepted format \(PNG, JPEG, WEBP, "
                           r"GIF, BMP\)")),
    (b"%PDF-1.4 a document", r"not an image in an accepted format"),
    (b"\x00" * (LIMITS.max_image_bytes + 1), (r"IMAGE\[0\]: 20971521 bytes exceed the limit of "
                                              r"20971520 bytes")),
    (None, r"IMAGE\[0\]: 10000 x 10000 = 100000000 pixels exceed the limit of 40000000"),
    (encoded(Image.new("RGB", (1, 101)), "PNG"), r"1 x 101 is more elongated than 100:1"),
    (encoded(picture(64, 64), "TIFF"), r"not an image in an accepted format"),
], ids=["empty", "garbage", "pdf", "too-many-bytes", "bomb", "elongated", "tiff"])
def test_refusals_name_the_field_and_the_limit(data, message):
    with pytest.raises(ImageError, match=message):
        prepare(bomb() if data is None else data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_a_truncated_file_is_refused_not_half_read(fmt):
    data = encoded(picture(200, 150, "P" if fmt == "GIF" else "RGB"), fmt)
    with pytest.raises(ImageError, match=r"IMAGE\[0\]: "):
        prepare(data[:len(data) // 2])


def test_the_most_elongated_accepted_image_gives_a_vector():
    assert prepare(encoded(Image.new("RGB", (1, 100), (10, 200, 30)), "PNG")).shape == (
        3, 224, 224)


def test_vision_tower_equals_clip_get_image_features(repository, processor):
    """The served E10 image path (ONNX) against CLIPModel.get_image_features, L2, on a
    two-tower CLIP made of the built text tower and the built vision tower."""
    from transformers import CLIPConfig, CLIPModel

    from export.architectures import VISION_TINY, ClipVision, architecture
    from export.build import tokenizer_ids
    from export.registry import tokenizer_family

    spec = embedder("E10")
    served = ImageEmbedder(version_dir(repository, IMAGE_EMBEDDER_MODEL))
    if served.info.get("pretrained"):
        vision = ClipVision().pretrained_module(served.info["checkpoint"]).model
        text = architecture(spec).pretrained_module(spec, served.info["checkpoint"]).model
    else:
        vision = ClipVision().seeded_module(spec, VISION_TINY).model
        text = architecture(spec).tiny_module(
            spec, tokenizer_ids(tokenizer_family(spec.tokenizer or ""), repository)).model
    config = CLIPConfig(text_config=text.config.to_dict(), vision_config=vision.config.to_dict(),
                        projection_dim=spec.dim)
    clip = CLIPModel(config).eval()
    clip.text_model.load_state_dict(text.text_model.state_dict())
    clip.text_projection.load_state_dict(text.text_projection.state_dict())
    clip.vision_model.load_state_dict(vision.vision_model.state_dict())
    clip.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    images = [picture(w, h, seed=i) for i, (w, h) in enumerate([(640, 480), (200, 300),
                                                                 (224, 224), (50, 999)])]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = clip.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)
    expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    actual = served.embed(np.stack([prepare(encoded(i, "PNG")) for i in images]))
    assert actual.shape == (4, 768)
    assert np.min(np.sum(actual * expected, axis=1)) >= 0.9999
    assert np.abs(actual[0] - actual[1]).max() > 1e-3  # different images, different vectors
