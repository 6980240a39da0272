from export import registry as r


def test_twelve_embedders_sum_to_fusemoe_input():
    assert [e.id for e in r.EMBEDDERS] == [f"E{i}" for i in range(1, 13)]
    assert sum(e.dim for e in r.EMBEDDERS) == r.FUSEMOE.input_dim == 8320


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
