"""make tune's variant repositories: the built repository linked, one knob changed."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import registry as r
from export.build import BUILT_CONFIG
from perf.tune import FULL_VARIANTS, NEURAL, Variant, variant_repository


def _built(repo, name: str) -> mc.ModelConfig:
    path = repo / name / "configs" / f"{BUILT_CONFIG}.pbtxt"
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_a_variant_changes_only_its_knob(repository, tmp_path):
    e11 = r.embedder("E11").triton_model
    variant = Variant("test", "threads 3, 3 instances of E11, no delay", {"threads": "3"},
                      fusemoe_threads="3", instances={e11: 3}, delay_us=0)
    repo = variant_repository(variant, tmp_path / "repo", repository)
    for name in NEURAL:
        before, after = _built(repository, name), _built(repo, name)
        assert after.parameters["threads"].string_value == "3"
        assert after.instance_group[0].count == (3 if name == e11 else r.RUNTIME.instances)
        assert after.dynamic_batching.max_queue_delay_microseconds == 0
        after.parameters["threads"].string_value = before.parameters["threads"].string_value
        after.instance_group[0].count = before.instance_group[0].count
        after.dynamic_batching.max_queue_delay_microseconds = \
            before.dynamic_batching.max_queue_delay_microseconds
        assert after == before, name
    assert _built(repo, r.FUSEMOE_MODEL).parameters["threads"].string_value == "3"
    # Weights and ensembles are links to the built repository, not copies.
    assert (repo / e11 / "1").is_symlink()
    assert (repo / r.ENSEMBLE_MODEL).is_symlink()


def test_only_the_named_models_are_linked(repository, tmp_path):
    models = {"tok_bert_uncased", r.embedder("E11").triton_model}
    repo = variant_repository(Variant("test", "none"), tmp_path / "repo", repository, models)
    assert {p.name for p in repo.iterdir()} == models


def test_a_variant_s_parameters_go_only_to_the_models_it_names(repository, tmp_path):
    e01, e11 = r.embedder("E1").triton_model, r.embedder("E11").triton_model
    repo = variant_repository(Variant("test", "E1 2 threads", {"threads": "2"}, models=(e01,)),
                              tmp_path / "repo", repository)
    threads = {name: _built(repo, name).parameters["threads"].string_value for name in NEURAL}
    assert threads[e01] == "2"
    assert {t for name, t in threads.items() if name != e01} == {str(r.RUNTIME.threads)}
    assert threads[e11] == str(r.RUNTIME.threads)


def test_the_full_sweep_has_e5_large_s_own_knobs_and_leaves_the_graph_levels_out():
    groups = {v.group for v in FULL_VARIANTS}
    assert "graph" not in groups and "e5-large" in groups
    e01 = r.embedder("E1").triton_model
    own = [v for v in FULL_VARIANTS if v.group == "e5-large"]
    assert all(v.models == (e01,) or set(v.instances) == {e01} for v in own)
    assert len({v.name for v in FULL_VARIANTS}) == len(FULL_VARIANTS)
