"""The stall detector on samples made by hand, and its readers on real text and /proc."""

import os
import subprocess
import time

from ensemble.stall import Sample, StallDetector, cpu_seconds, parse_metrics


def feed(detector, seconds, step=5.0, pending=1.0, completed=0.0, cpu=0.0, cpu_per_s=0.0,
         start=0.0):
    stalled = []
    t = start
    while t <= start + seconds:
        stalled = detector.add(Sample(t, {"e08_graph": pending, "fusemoe": 0.0},
                                      {"e08_graph": completed, "fusemoe": 10.0},
                                      {"e08_graph": cpu + cpu_per_s * (t - start)}))
        t += step
    return stalled


def test_pending_requests_nothing_completed_and_idle_stubs_for_the_window_is_a_stall():
    detector = StallDetector(window_s=30, busy_window_s=300)
    assert feed(detector, 25) == []  # not a whole window yet
    assert feed(detector, 10, start=30) == ["e08_graph"]


def test_a_model_that_completes_requests_or_has_none_pending_is_not_stalled():
    detector = StallDetector(window_s=30)
    for t in range(0, 60, 5):
        assert detector.add(Sample(t, {"e08_graph": 3.0}, {"e08_graph": float(t)},
                                   {"e08_graph": 0.0})) == []
    detector = StallDetector(window_s=30)
    for t in range(0, 50, 5):  # the queue drained in between: every window so far has it
        pending = 0.0 if t == 20 else 2.0
        assert detector.add(Sample(t, {"e08_graph": pending}, {"e08_graph": 1.0},
                                   {"e08_graph": 0.0})) == []


def test_a_busy_stub_is_stalled_only_after_the_long_window():
    detector = StallDetector(window_s=30, busy_window_s=120)
    assert feed(detector, 115, cpu_per_s=0.9) == []  # a long batch computing
    assert feed(detector, 10, cpu_per_s=0.9, start=120, cpu=0.9 * 120) == ["e08_graph"]


def test_stubs_replaced_meanwhile_and_a_restart_start_the_judgement_again():
    detector = StallDetector(window_s=30)
    feed(detector, 20, cpu=50.0)
    assert feed(detector, 15, cpu=1.0, start=25) == []  # CPU fell: new stubs
    detector.forget()
    assert feed(detector, 25, start=100) == []


def test_ensembles_without_stubs_are_judged_by_the_long_window_only():
    detector = StallDetector(window_s=30, busy_window_s=60)
    for t in range(0, 65, 5):
        stalled = detector.add(Sample(t, {"fused_text": 4.0}, {"fused_text": 7.0}))
        assert stalled == ([] if t < 60 else ["fused_text"]), t


TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="e08_graph",version="1"} 12
nv_inference_request_success{model="fused_text",version="1"} 4
# HELP nv_inference_request_failure Number of failed inference requests
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="e08_graph",reason="REJECTED",version="1"} 2
nv_inference_request_failure{model="e08_graph",reason="BACKEND",version="1"} 1
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="e08_graph",version="1"} 3
nv_inference_pending_request_count{model="fused_text",version="1"} 0
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def test_the_counters_are_read_from_tritons_metrics_text():
    pending, completed = parse_metrics(TRITON_TEXT)
    assert pending == {"e08_graph": 3.0, "fused_text": 0.0}
    assert completed == {"e08_graph": 15.0, "fused_text": 4.0}


def test_cpu_seconds_of_live_and_gone_processes():
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        used = cpu_seconds({"spinning": [busy.pid], "gone": [2 ** 22 + 1],
                            "me": [os.getpid()]})
        assert used["spinning"] > 0.3 and used["gone"] == 0.0 and used["me"] > 0
    finally:
        busy.kill()
        busy.wait()


def test_the_verdict_read_back(tmp_path):
    from ensemble.stall import read_verdict, write_verdict

    path = tmp_path / "verdict.json"
    assert read_verdict(path).fault == "the launcher's watchdog has not reported"
    write_verdict(path, [], now=1000.0)
    assert read_verdict(path, now=1010.0).fault is None
    assert "for 20 s" in read_verdict(path, now=1020.0).fault
    write_verdict(path, ["e08_graph"], now=1000.0)
    assert "e08_graph" in read_verdict(path, now=1001.0).fault
    write_verdict(path, [], restarting=True, failed_restarts=2, now=1000.0)
    assert read_verdict(path, now=1001.0) == type(read_verdict(path))(None, True)
    write_verdict(path, [], restarting=True, failed_restarts=3, now=1000.0)
    assert "after 3 restarts" in read_verdict(path, now=1001.0).fault
    path.write_text("{not json")
    assert read_verdict(path).fault is not None
