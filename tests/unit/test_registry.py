from export import registry as r

# The design's table of the twelve embedders (DESIGN.md), written out on its own: the
# registry must say the same, and the built models must produce blocks of these widths.
DESIGN_DIMS = {"E1": 1024, "E2": 512, "E3": 512, "E4": 512, "E5": 768, "E6": 1536, "E7": 768,
               "E8": 384, "E9": 1024, "E10": 768, "E11": 384, "E12": 128}


def test_the_registry_has_the_design_s_twelve_embedders_and_widths():
    assert {e.id: e.dim for e in r.EMBEDDERS} == DESIGN_DIMS
    assert [e.id for e in r.EMBEDDERS] == list(DESIGN_DIMS)


def test_the_built_models_answer_blocks_of_the_design_s_widths(repository):
    """Each served stage's block, as the in-process pipeline computes it from the built
    weights, has the design's width, and FuseMoE takes their concatenation."""
    import numpy as np

    from ensemble import fusemoe
    from ensemble.pipeline import Pipeline

    out = Pipeline(repository).embed(["a sentence", "another one"],
                                     np.array([0, 1_700_000_000], dtype=np.int64))
    assert {b: v.shape for b, v in out.blocks.items()} == {
        b: (2, d) for b, d in DESIGN_DIMS.items()}
    model, _ = fusemoe.load(repository / r.FUSEMOE_MODEL / "1")
    assert model.cfg.input_dim == sum(DESIGN_DIMS.values()) == 8320
    assert out.fused.shape == (2, 1536)


def test_triton_names_are_unique_and_match_the_design():
    names = [e.triton_model for e in r.EMBEDDERS]
    assert len(set(names)) == 12
    assert names[0] == "e01_semantic" and names[-1] == "e12_late_interaction"


def test_block_offsets_tile_the_concatenation():
    offsets = r.block_offsets()
    assert offsets["E1"] == (0, 1024)
    assert offsets["E12"] == (8320 - 128, 8320)
    ends = [offsets[e.id][1] for e in r.EMBEDDERS]
    starts = [offsets[e.id][0] for e in r.EMBEDDERS]
    assert starts[1:] == ends[:-1]


def test_token_models_fit_their_tokenizer_family():
    for e in r.EMBEDDERS:
        if e.input is r.Input.TOKENS:
            assert e.max_length <= r.tokenizer_family(e.tokenizer).max_length
        else:
            assert e.tokenizer is None
