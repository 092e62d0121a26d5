"""`pdserve loadtest --ratios/--colocated` end to end: real `pdserve up` clusters of the
`tiny` model, started and stopped by the load tester itself, one arm after another.

Every process the clusters start (pdserve up, Ray's GCS and raylet, the workers) inherits
an environment variable unique to the test, so "nothing left behind" is checked on exactly
those processes, whatever else runs on the box."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from pdserve.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAG_ENV = "LOADTEST_ARMS_TEST_RUN"


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> str:
    """A value of TAG_ENV that every process started during the test inherits."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, value)
    return value


def tagged_processes(tag: str) -> list[str]:
    """Command lines of live processes (other than this one) whose environment has `tag`."""
    marker = f"{TAG_ENV}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wait_until_gone(tag: str, timeout_s: float = 20.0) -> list[str]:
    """The tagged processes still alive after `timeout_s` (Ray reaps its own shortly after
    `pdserve up` exits)."""
    deadline = time.monotonic() + timeout_s
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_each_arm_runs_the_workload_on_its_own_cluster_and_leaves_nothing(
    tiny_dir: Path, tmp_path: Path, tag: str
):
    """1P1D and one colocated worker (at 2 threads: the same cores) each serve the same six
    requests; the JSON has both arms, the PNG their CDFs, and no cluster process survives."""
    out = tmp_path / "r.json"
    argv = ["loadtest", "--ratios", "1:1", "--colocated", "1", "--model", "tiny"]
    argv += ["--workload", "random", "--num-requests", "6", "--input-len", "16:32"]
    argv += ["--output-len", "4:8", "--rate", "inf", "--slo", "ttft=30,tpot=5", "--out", str(out)]
    assert main(argv) == 0
    assert wait_until_gone(tag) == []

    document = json.loads(out.read_text())
    assert document["params"]["address"] is None
    assert [arm["name"] for arm in document["params"]["arms"]] == ["1P1Dx1t", "1Cx2t"]
    assert [arm["name"] for arm in document["arms"]] == ["1P1Dx1t", "1Cx2t"]
    for arm in document["arms"]:
        results = arm["results"]
        assert results["by_status"] == {"OK": 6}
        assert (results["num_ok"], results["num_failed"]) == (6, 0)
        assert results["slo_attainment"] == 1.0
        assert 0 < results["ttft"]["p50"] <= results["ttft"]["p99"] < 30
        assert 0 < results["tpot"]["p50"] < 5
        num_output_tokens = round(results["output_tokens_per_s"] * results["duration_s"])
        num_prompt_tokens = round(results["input_tokens_per_s"] * results["duration_s"])
        assert 6 * 4 <= num_output_tokens <= 6 * 8
        assert 6 * 16 <= num_prompt_tokens <= 6 * 32
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_cluster_that_fails_to_start_is_reported_and_ends_the_run(
    tmp_path: Path, tag: str, capsys: pytest.CaptureFixture[str]
):
    """A config `pdserve up` refuses: the first arm's cluster exits, its log tail is shown,
    the second arm never starts, and the exit code is 1 with no traceback of ours."""
    config = tmp_path / "bad.yaml"
    config.write_text("kv_cache_mib: -5\n")
    argv = ["loadtest", "--ratios", "1:1", "--colocated", "1", "--cluster-config", str(config)]
    argv += ["--num-requests", "2", "--rate", "inf", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "pdserve loadtest: cluster 1P1Dx1t exited with code 2" in captured.err
    assert "kv_cache_mib" in captured.err
    assert "Traceback" not in captured.err
    assert "1Cx2t" not in captured.out + captured.err
    assert not (tmp_path / "r.json").exists()
    assert wait_until_gone(tag) == []
