"""A landing pays no first imports: the trainer makes the imports its first job would make
(torch.optim's torch._dynamo, some seconds) in the background at start, so data that lands
afterwards trains without importing anything heavy on its way to serving."""

import pytest

from oddity.common import bundle
from tests.support import datasets
from tests.support.servers import ServiceProcess
from tests.support.waiting import wait_for

# Packages whose first import takes a second or more here (torch._dynamo brings the torch ones
# after it and sympy); none may be imported once the trainer has started.
HEAVY = {
    "torch",
    "torch._dynamo",
    "torch._functorch",
    "torch._inductor",
    "torch.fx",
    "torch.onnx",
    "sympy",
    "sklearn",
    "scipy",
    "onnx",
    "onnxruntime",
    "skl2onnx",
}


def imported(lines: list[str]) -> list[str]:
    """The modules a `-X importtime` trace names (`import time: self | cumulative | module`)."""
    return [line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:") and "|" in line]


@pytest.mark.slow  # a trainer process started with an import trace
def test_data_landing_after_start_imports_nothing_heavy(tmp_path):
    data_volume, repository = tmp_path / "data", tmp_path / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    trainer = ServiceProcess(
        "oddity.trainer.main",
        ["--data-volume", str(data_volume), "--model-repository", str(repository)],
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    ).start()
    try:
        wait_for(lambda: trainer.events("imports prewarmed"), timeout=120, what="the start-up imports")
        prewarmed = next(i for i, line in enumerate(trainer.lines) if '"imports prewarmed"' in line)
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0.2}}
        for name, model in (("encoded", {"kind": "autoencoder", "params": {"epochs": 2}}), ("default", None)):
            frame = datasets.sensor_frame(600, d=4, seed=1)
            datasets.write_dataset(data_volume, name, {**spec, **({"model": model} if model else {})}, {"a.csv": frame})
        for name in ("encoded", "default"):
            wait_for(lambda n=name: bundle.list_versions(repository / n) == [1], timeout=120, what=f"{name} version 1")
        wait_for(lambda: len(trainer.events("job finished")) == 2, what="both jobs finished")
    finally:
        trainer.terminate()
    late = [module for module in imported(trainer.lines[prewarmed:]) if module in HEAVY]
    assert late == []
