"""Run by tests/test_distributed.py under ``torchrun``: every job of a JSON spec, in order.

    torchrun --nproc-per-node 2 tests/dist_worker.py SPEC.json

A job: {"data": DIR, "out": DIR, "kwargs": {...}} for hebbret.pretrain, or "embed": {...} for
hebbret.embed.extract_embeddings; "kill_at": n makes every rank die as Hebbian step n starts
(a killed job, to resume; "kill_rank": only that rank dies); "data_by_rank": [DIR0, DIR1]
gives each rank its own folder.
"""

import json
import sys

import torch

from hebbret import pretraining
from hebbret.distributed import world
from hebbret.embed import extract_embeddings

torch.set_num_threads(1)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    rank = world().rank
    for job in spec["jobs"]:
        if "embed" in job:
            extract_embeddings(**job["embed"], quiet=True)
            continue
        data = job["data_by_rank"][rank] if "data_by_rank" in job else job["data"]
        if "kill_at" in job and job.get("kill_rank", rank) == rank:
            real, calls = pretraining.hebbian_step, {"n": 0}

            def dying(*args, _real=real, _calls=calls, _at=job["kill_at"], **kw):
                _calls["n"] += 1
                if _calls["n"] == _at:
                    raise SystemExit(3)
                return _real(*args, **kw)

            pretraining.hebbian_step = dying
        pretraining.pretrain(data, out=job["out"], quiet=True, **job["kwargs"])


if __name__ == "__main__":
    main()
