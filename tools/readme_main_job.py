"""Write a `hebbret run` report into README.md between the main-job markers.

    python tools/readme_main_job.py runs/hebbret-run \
        --command ".venv/bin/hebbret run" --machine "this project's 2-core CPU"

The block holds the command, where and at which commit it ran, its wall time (from the
report's stage times) and the report's tables (``report/results.md``) verbatim.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common.results import fill_section, git_commit

ROOT = Path(__file__).resolve().parents[1]


def render(run_dir: Path, command: str, machine: str, commit: str | None = None) -> str:
    report = run_dir / "report"
    results = json.loads((report / "results.json").read_text())
    seconds = sum(sum(r["seconds"].values()) for r in results["rows"].values())
    commit = commit or git_commit(ROOT, ignore=("README.md", "docs", "tools/results"))
    table = (report / "results.md").read_text().strip()
    return (f"What `{command}` printed ({machine}, commit {commit}; the stages took {seconds:.0f} s "
            f"in all; `{report / 'results.md'}`):\n\n{table}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--command", default="hebbret run")
    parser.add_argument("--machine", default="this project's 2-core CPU")
    parser.add_argument("--commit", help="the commit the run was made at (default: the checkout's)")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    fill_section(readme, "main-job", render(args.run_dir, args.command, args.machine, args.commit))
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
