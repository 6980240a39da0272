"""perf.kernels' own logic: the sums per variant and the report's comparison with what the
int8 build serves."""

from __future__ import annotations

from perf import kernels


def _result() -> dict:
    def row(ms: float, cos: float = 0.999) -> dict:
        return {"ms_per_batch": ms, "min_cos": cos, "mean_cos": cos, "made_s": 1.0}
    return {"texts": 64, "calibration_texts": 128,
            "peak_1_thread": {"fp32": 85.0, "int8": 171.0},
            "variants": ["ort-fp32", kernels.SERVED, "ort-int8-fused", "openvino-int8"],
            "models": {
                "E1": {"variants": {"ort-fp32": row(1000.0, 1.0), kernels.SERVED: row(600.0),
                                    "ort-int8-fused": row(500.0),
                                    "openvino-int8": {"error": "RuntimeError: no"}}},
                "E6": {"variants": {"ort-fp32": row(300.0, 1.0), kernels.SERVED: row(200.0),
                                    "ort-int8-fused": row(100.0),
                                    "openvino-int8": row(400.0)}}}}


def test_totals_sum_each_variant_over_the_models_and_none_where_one_failed():
    assert kernels.totals(_result()) == {"ort-fp32": 1300.0, kernels.SERVED: 800.0,
                                         "ort-int8-fused": 600.0, "openvino-int8": None}


def test_the_report_compares_each_variant_with_the_served_int8():
    text = "\n".join(kernels.report_lines(_result()))
    assert "| E1 | ort-int8-fused | 500 | 1.20x | 0.99900 | 0.99900 | 1 |" in text
    assert "| E6 | openvino-int8 | 400 | 0.50x |" in text
    assert "| E1 | openvino-int8 | could not be made: RuntimeError: no |" in text
    assert "| ort-int8-fused | 600 | 1.33x |" in text
    assert "| openvino-int8 | (a model could not run it) | |" in text


def test_an_unknown_variant_is_refused_by_name(capsys):
    import pytest

    with pytest.raises(SystemExit):
        kernels.main(["--variants", "ort-fp32,tensorrt-int4"])
    assert "tensorrt-int4" in capsys.readouterr().err
