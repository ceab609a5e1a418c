"""tools/bench_gpu.py without a GPU: a CPU smoke pass that says so, writes nothing, exits 0."""


import pytest
import torch

from .conftest import load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


@pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke pass is the no-GPU path")
def test_without_a_gpu_it_smoke_tests_on_the_cpu_and_writes_nothing(tmp_path, capsys, caplog):
    bench = load_tool("bench_gpu")
    data = tmp_path / "data"
    write_image_folder(data / "train", classes=2, per_class=12, size=32, seed=0)
    write_image_folder(data / "test", classes=2, per_class=4, size=32, seed=1)
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- gpu-results:begin -->\nold\n<!-- gpu-results:end -->\n")
    results = tmp_path / "gpu.json"
    with caplog.at_level("INFO"):
        rc = bench.main([str(data), "--results", str(results), "--readme", str(readme),
                         "--smoke-steps", "3"])
    assert rc == 0 and "torch sees no GPU" in caplog.text
    out = capsys.readouterr().out
    assert "On cpu" in out and "| Hebbian epoch, batch 10, fp32, cold cache |" in out
    assert "| embed 32 images |" in out  # 2 classes × (12 train + 4 test)
    assert not results.exists() and "old" in readme.read_text()
    assert bench.main([str(tmp_path / "nowhere")]) == 2
