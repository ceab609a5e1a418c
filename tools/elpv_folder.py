"""Write the ELPV solar-cell images (PyPI ``elpv-dataset``, CC BY-NC-SA 4.0: evaluation only,
never commit them) out as a labeled folder ``OUT/<defect probability>/cellNNNN.png``.

    pip install --no-deps elpv-dataset
    python tools/elpv_folder.py /tmp/elpv
    hebbret run /tmp/elpv

The four classes are the annotated defect probabilities 0, 1/3, 2/3 and 1 (folders p000, p033,
p067, p100); mono- and polycrystalline cells are mixed, as in the package.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

log = logging.getLogger("elpv_folder")


def write_folder(out: Path) -> dict[str, int]:
    """Copy every cell image into ``out/<class>/``; returns the count per class."""
    try:
        import elpv_dataset
    except ImportError:
        raise SystemExit("needs the elpv-dataset package: pip install --no-deps elpv-dataset") from None
    data = Path(elpv_dataset.__file__).parent / "data"
    counts: dict[str, int] = {}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for line in (data / "labels.csv").read_text().splitlines():
        path, prob, _kind = line.split()
        name = f"p{round(float(prob) * 100):03d}"
        (tmp / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / path, tmp / name / Path(path).name)
        counts[name] = counts.get(name, 0) + 1
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return counts


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    counts = write_folder(p.parse_args().out)
    log.info("wrote %d images: %s", sum(counts.values()), counts)


if __name__ == "__main__":
    main()
