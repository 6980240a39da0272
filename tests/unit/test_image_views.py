"""The measures of perf.image_views: variant AUC, pairwise Spearman, the image set and its
variants."""

import io

import numpy as np
import pytest
from PIL import Image

from perf import image_views


def test_variant_auc_counts_the_other_images_farther_than_the_variant():
    originals = np.eye(4, dtype=np.float32) + 0.1
    close = originals + 0.01 * np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.allclose(image_views.variant_auc(originals, close), 1.0)
    # Image 0's variant is image 1 itself: tied with image 1, farther than nothing else.
    swapped = close.copy()
    swapped[0] = originals[1]
    auc = image_views.variant_auc(originals, swapped)
    assert auc[0] == pytest.approx(0.5 / 3) and np.allclose(auc[1:], 1.0)


def test_pairwise_spearman_is_one_for_a_monotone_map_of_the_cosines_and_low_for_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 16))
    assert image_views.pairwise_spearman(a, 3.0 * a) == pytest.approx(1.0)
    assert image_views.pairwise_spearman(a, rng.normal(size=(50, 16))) < 0.2


def test_measure_reports_auc_by_variant_and_cosines():
    rng = np.random.default_rng(1)
    o = rng.normal(size=(20, 8))
    vectors = {"original": o} | {v: o + 0.05 * rng.normal(size=o.shape)
                                 for v in image_views.VARIANTS}
    m = image_views.measure(vectors)
    assert m["auc"] == 1.0 and set(m["auc_by_variant"]) == set(image_views.VARIANTS)
    assert m["cosine_to_variants"] > 0.99 > m["cosine_to_others"]
    same = image_views.measure({k: o for k in vectors})
    assert same["cosine_to_others_max"] < same["cosine_to_variants"] == pytest.approx(1.0)


def test_variants_are_decodable_images_of_the_stated_kind():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 90, 3), np.uint8))
    made = image_views.variants(image)
    assert set(made) == set(image_views.VARIANTS)
    sizes = {k: Image.open(io.BytesIO(v)).size for k, v in made.items()}
    assert sizes["resized"] == (54, 36) and sizes["cropped"] == (72, 48)
    assert Image.open(io.BytesIO(made["jpeg"])).format == "JPEG"
    assert sizes["recoloured"] == (90, 60) and made["recoloured"] != image_views.png(image)


def test_the_image_set_is_a_few_hundred_distinct_images_with_their_files_hashed():
    samples, sums = image_views.sample_images()
    assert len(samples) >= 250 and len({s.name for s in samples}) == len(samples)
    assert "lfw_subset.npy" in sums and not set(image_views.DUPLICATES) & set(sums)
    assert all(len(h) == 64 for h in sums.values())
