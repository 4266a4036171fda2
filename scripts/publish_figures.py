"""Write the score tables of README.md and docs/benchmarks.md from docs/evaluation/evaluation.json.

    .venv/bin/napari-mine evaluate --seeds 0 1 2 3 101 102 103 104 105 --out /tmp/eval
    cp /tmp/eval/evaluation.json /tmp/eval/evaluation.md docs/evaluation/
    .venv/bin/python scripts/publish_figures.py

tests/test_published.py fails when a page's table differs from what the committed evaluation says.
"""

import json
from pathlib import Path

from napari_mine.published import EVALUATION, PAGES, block, replace_block

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    evaluation = json.loads((ROOT / EVALUATION).read_text())
    for page in PAGES:
        path = ROOT / page
        path.write_text(replace_block(path.read_text(), block(evaluation), str(page)))
        print(f"updated {page}")


if __name__ == "__main__":
    main()
