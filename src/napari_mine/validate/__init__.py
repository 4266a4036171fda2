"""Causal validation (DESIGN.md §1 step 5): do the features MINE names really drive the voxel?

Every experiment runs on (voxel, image) pairs drawn from the top images of well-predicted category voxels
(:func:`sample_pairs`):

* :func:`sufficiency` — an image generated from the pair's per-image description alone should drive the
  voxel like the original, better than images generated from a description of random concepts or of the
  image's lowest-attribution patches (same describer, other region);
* :func:`removal` — removing what lies under the high-attribution region should lower the response;
* :func:`insertion` — putting the described feature (or the voxel's top profile concept) into the voxel's
  low-response images, where the feature sat in the top image, should raise it.

A response is the encoder's prediction for the new image and, on the synthetic world, also the true
simulated brain's response to the generated or edited *scene* — the test that is not circular, since the
true brain never sees model features. Pairs that share a voxel are not independent, so the voxel is the
unit of every interval and test. :func:`run_validation` opens one :class:`Workbench`, runs every experiment on
it and summarises them into ``summary.json["validation"]`` after each (so a failure keeps what finished,
marked incomplete), with example strips (``report_validation``).

The package is split by role: ``bench`` (what the experiments read, through the one read path, and the
synthetic world's generator and truth), ``pairs`` (sampling), ``descriptions`` (the texts generated and
inserted), ``edits`` (masks and per-pair edits), ``experiments``, ``stats`` (voxel-unit bootstraps and
tests) and ``summary`` (the run and its JSON).
"""

from napari_mine.validate import stats
from napari_mine.validate.descriptions import (checked_space, default_space, feature_phrase, image_feature,
                                               low_attribution_text, random_text)
from napari_mine.validate.edits import attribution_masks
from napari_mine.validate.experiments import (CONCEPT_SOURCES, SUFFICIENCY_CONDITIONS, TRUE_MEAN_IMAGES, insertion,
                                              removal, sufficiency)
from napari_mine.validate.pairs import CATEGORY_ROIS, IMAGES_PER_VOXEL, N_VOXELS, TOP_K, sample_pairs
from napari_mine.validate.stats import N_BOOT, delta_ratio
from napari_mine.validate.workbench import Workbench, open_workbench, truth_voxels, world_validation
from napari_mine.validate.summary import run_validation

__all__ = ["run_validation", "open_workbench", "Workbench", "world_validation", "truth_voxels", "sample_pairs",
           "sufficiency", "removal", "insertion", "delta_ratio", "attribution_masks", "checked_space",
           "default_space", "feature_phrase", "image_feature", "low_attribution_text", "random_text", "stats",
           "CATEGORY_ROIS", "CONCEPT_SOURCES", "SUFFICIENCY_CONDITIONS", "TRUE_MEAN_IMAGES", "N_BOOT", "N_VOXELS",
           "IMAGES_PER_VOXEL", "TOP_K"]
