"""The interface's default ``terminate_many`` (terminate, then confirm with ``poll``), on the fake provider's faults."""

from __future__ import annotations

from tools.gpu.base import LaunchSpec
from tools.gpu.fake import FakeGpuProvider


def _launch(gpu: FakeGpuProvider, n: int) -> list[str]:
    spec = LaunchSpec(label="learning-pilot/t/run-1", offer_id="fake-1", image="img", command=["true"])
    return [gpu.launch(spec).id for _ in range(n)]


def test_terminate_many_retries_what_survived_and_refusals_until_gone() -> None:
    gpu = FakeGpuProvider()
    ids = _launch(gpu, 3)
    gpu.stubborn[ids[1]] = 2  # survives two terminate calls
    gpu.fail_terminate = 1  # the first call is refused
    report = gpu.terminate_many(ids, deadline_s=5)
    assert report.ok and sorted(report.gone) == sorted(ids)
    assert gpu.list_owned("learning-pilot/") == []


def test_terminate_many_reports_what_is_not_gone_by_the_deadline() -> None:
    gpu = FakeGpuProvider()
    ids = _launch(gpu, 2)
    gpu.stubborn[ids[0]] = 10_000
    report = gpu.terminate_many(ids, deadline_s=0.3)
    assert report.gone == (ids[1],)
    assert list(report.not_gone) == [ids[0]] and "still listed" in report.not_gone[ids[0]]
    assert report.duration_s <= 1.0
