"""tools/bench_softhebb.py without SoftHebb's demo: hebbret's side only, on real image files."""

import json

import pytest

from .conftest import load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


def test_hebbrets_side_alone_writes_its_rows_and_the_docs_table(tmp_path, capsys):
    bench = load_tool("bench_softhebb")
    data = write_image_folder(tmp_path / "train", classes=2, per_class=10, size=32)
    readme = tmp_path / "results.md"
    readme.write_text("x\n<!-- softhebb:begin -->\nold\n<!-- softhebb:end -->\n")
    out = tmp_path / "softhebb.json"
    bench.main(["--data", str(data), "--batches", "10", "--precisions", "fp32", "--steps", "2",
                "--rounds", "1", "--repeats", "1", "--max-wait", "0", "--no-compile",
                "--out", str(out), "--readme", str(readme)])
    doc = json.loads(out.read_text())
    [row] = doc["rows"]
    assert (row["batch"], row["side"], row["precision"], row["compiled"]) == (10, "hebbret",
                                                                              "fp32", False)
    assert row["step_s"] > 0 and 0 < row["gemm_fraction"] < 2 and row["gemm_gflops"] > 0
    assert row["speedup_vs_softhebb"] is None and doc["targets"]["batch10"] == "not measured"
    text = readme.read_text()
    assert "old" not in text and "| 10 | hebbret | fp32 | eager |" in text
    assert "| 10 | hebbret | fp32 | eager |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        bench.main(["--softhebb", str(tmp_path / "missing.py")])
