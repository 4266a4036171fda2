"""The texts the experiments generate from and insert: MINE's, its controls', and the concept space they use.

Sufficiency is only a test if its controls are phrased like MINE's descriptions (the same describer, other
concepts or another region), so a generator cannot tell them apart by their form; insertion puts in what a
generator can draw (a caption-style phrase of a grouped vocabulary, not a colour alone). The concept space
defaults to the generator's own vocabulary, which the generator may refuse if it cannot draw it.
"""

from __future__ import annotations

import numpy as np


def low_attribution_text(tokens, weight, space, n_patches: int, n_prefix_tokens: int = 1) -> str:
    """The same describer as MINE's, read out on the ``n_patches`` lowest-attribution patches instead.

    Parameters
    ----------
    tokens : float (T, D)
    weight : float (D,)
    space : vocabulary.ConceptSpace
    n_patches : int
        Size of the region (that of MINE's high-attribution region, for a matched control).
    n_prefix_tokens : int

    Returns
    -------
    str
    """
    from napari_mine import describe as D
    from napari_mine.attribution import patch_attribution

    attribution = patch_attribution(tokens, weight)
    region = np.zeros(len(tokens), bool)
    region[n_prefix_tokens + np.argsort(attribution[n_prefix_tokens:], kind="stable")[:max(n_patches, 1)]] = True
    place = np.ones(len(tokens))  # the region's patches weigh alike: where it lies, and the object around it
    presence = D.region_presence(tokens, place, region, space, n_prefix_tokens)
    scores = D.concept_scores(presence, D.concept_drive(weight, space.directions, space.group_columns))
    x = D.region_x(place, region, n_prefix_tokens) if D.POSITION_GROUP in space.vocabulary.groups else None
    return D.description_text(scores, presence, space.vocabulary, x)


def random_text(space, rng) -> str:
    """A description of random concepts, phrased like MINE's (random scores and presences)."""
    from napari_mine.describe import description_text

    n = len(space.vocabulary)
    return description_text(rng.standard_normal(n), rng.standard_normal(n), space.vocabulary)


def feature_phrase(scores, presence, vocabulary) -> str:
    """What an insertion puts in: the caption-style phrase of a grouped vocabulary (a category with its
    attributes, which a generator can draw; a grouped vocabulary's best concept may be a colour alone), else
    the single best concept."""
    from napari_mine.describe import HEAD_GROUP, description_text, rank_concepts

    if HEAD_GROUP in vocabulary.groups:
        return description_text(scores, presence, vocabulary)
    return vocabulary.concepts[int(rank_concepts(scores, presence)[0])]


def image_feature(description, vocabulary) -> str:
    """:func:`feature_phrase` of a per-image description ("" when no patch has positive attribution)."""
    from napari_mine.describe import HEAD_GROUP

    if not description.concepts:
        return ""
    return description.text if HEAD_GROUP in vocabulary.groups else description.concepts[0]


def default_space(backbone, generator):
    """The concept space of the generator's own vocabulary (the synthetic grammar for the procedural one, the
    general vocabulary otherwise), embedded by ``backbone``."""
    from napari_mine.vocabulary import concept_space

    return concept_space(generator.default_vocabulary(), backbone)


def checked_space(bench, space):
    """The concept space descriptions are read in (default: the generator's), refused if it belongs to another
    model than the results' or names what the generator cannot draw."""
    space = default_space(bench.backbone, bench.generator) if space is None else space
    bench.results.check_model(space.model_id)
    bench.generator.check_vocabulary(space.vocabulary)
    return space
