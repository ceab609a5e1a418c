"""Write a `hebbret run` report into README.md between the main-job markers.

    python tools/readme_main_job.py runs/hebbret-run \
        --command ".venv/bin/hebbret run" --machine "this project's 2-core CPU"

The block holds the command, where and at which commit it ran, its wall time (from the
report's stage times) and the report's tables (``report/results.md``) verbatim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def render(run_dir: Path, command: str, machine: str) -> str:
    report = run_dir / "report"
    results = json.loads((report / "results.json").read_text())
    seconds = sum(sum(r["seconds"].values()) for r in results["rows"].values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    table = (report / "results.md").read_text().strip()
    return (f"What `{command}` printed ({machine}, commit {commit}; the stages took {seconds:.0f} s "
            f"in all; `{report / 'results.md'}`):\n\n{table}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--command", default="hebbret run")
    parser.add_argument("--machine", default="this project's 2-core CPU")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = render(args.run_dir, args.command, args.machine)
    readme.write_text(f"{head}{BEGIN}\n{block}{END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
