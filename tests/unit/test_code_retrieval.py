"""The second task's pieces: held-out pairs are disjoint from training's, ranks count ties
against the relevant document, and the metrics are the textbook ones."""

from __future__ import annotations

import numpy as np

from ensemble import corpus, train
from perf.code_retrieval import metrics, ranks, relevant_ranks, rrf_relevant_ranks


def test_the_held_out_pairs_are_the_ones_training_never_saw():
    from perf.code_retrieval import held_out_pairs

    cfg = train.TrainConfig()
    held = held_out_pairs(cfg)
    trained = corpus.code_pairs(cfg.code_pairs, cfg.seed)
    assert len(held) >= 1000
    assert not {p.first for p in held} & {p.first for p in trained}
    assert not {p.second for p in held} & {p.second for p in trained}
    assert len({p.second for p in held}) == len(held)  # one relevant document per query


def test_ranks_follow_cosine_and_ties_count_against_the_relevant_document():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = np.array([[1.0, 0.1], [0.1, 1.0], [2.0, 2.0]])  # the length does not count
    assert ranks(q, d).tolist() == [[1, 3, 2], [3, 1, 2], [3, 3, 1]]
    constant = np.ones((3, 2))
    assert relevant_ranks(ranks(constant, constant)).tolist() == [3, 3, 3]


def test_reciprocal_rank_fusion_of_one_good_and_one_blind_ranking():
    good = np.array([[1, 2, 3], [2, 1, 3], [3, 2, 1]])
    blind = np.full((3, 3), 3)
    assert rrf_relevant_ranks([good, blind]).tolist() == [1, 1, 1]
    worst = np.array([[3, 1, 2], [1, 3, 2], [1, 2, 3]])
    assert rrf_relevant_ranks([worst, blind]).tolist() == [3, 3, 3]


def test_metrics_of_known_ranks():
    m = metrics(np.array([1, 2, 11]))
    assert np.isclose(m["ndcg@10"], (1 + 1 / np.log2(3)) / 3)
    assert np.isclose(m["mrr@10"], 0.5) and np.isclose(m["recall@10"], 2 / 3)
