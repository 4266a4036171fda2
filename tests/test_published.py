"""Published figures come from the runs: every page's score table is what the committed evaluation says."""

import json
from pathlib import Path

import pytest

from napari_mine.published import EVALUATION, PAGES, block, published_block, replace_block

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_page_tables_match_the_committed_evaluation(page):
    evaluation = json.loads((ROOT / EVALUATION).read_text())
    assert published_block((ROOT / page).read_text()) == block(evaluation), \
        f"{page} is stale: run scripts/publish_figures.py after updating {EVALUATION}"


def test_a_changed_figure_is_caught():
    evaluation = json.loads((ROOT / EVALUATION).read_text())
    page = replace_block((ROOT / PAGES[0]).read_text(), block(evaluation), str(PAGES[0]))
    name = "attribution/pointing_game"
    evaluation["scores"]["all"][name]["per_seed"][str(evaluation["seed_split"]["demo"][0])] += 0.01
    assert published_block(page) != block(evaluation)
    with pytest.raises(ValueError, match="exactly one pair of score markers"):
        replace_block("no markers here", block(evaluation), "page.md")
