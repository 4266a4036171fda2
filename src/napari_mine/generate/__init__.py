"""Image generators for causal validation (DESIGN.md §1 step 5).

:class:`Generator` is the interface and :class:`Edit` the one subject every operation takes and returns (an
image, and for the synthetic world its scene); :class:`ProceduralGenerator` renders and edits synthetic-world
scenes (so the true brain can be measured on an edit), :class:`DiffusionGenerator` runs diffusers pipelines on
real images. :func:`attribution_mask` turns an attribution map into the mask an edit is made under.
torch and diffusers are imported only when a diffusion pipeline is loaded or run.
"""

from napari_mine.generate.base import (Edit, GenerationCancelled, Generator, as_edits, attribution_mask, composite,
                                       feather, images_of)
from napari_mine.generate.diffusion import DiffusionGenerator, load_pipeline, random_pipeline
from napari_mine.generate.procedural import ProceduralGenerator, parse_phrase, scene_from_description

__all__ = ["Generator", "Edit", "as_edits", "images_of", "GenerationCancelled", "attribution_mask", "composite",
           "feather", "ProceduralGenerator", "scene_from_description", "parse_phrase", "DiffusionGenerator",
           "load_pipeline", "random_pipeline"]
