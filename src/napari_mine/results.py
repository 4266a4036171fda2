"""The one read path through a results folder (DESIGN.md §3): a typed manifest and a read session.

:class:`Manifest` is the only code that knows the manifest's JSON layout; it is parsed once per session.
:class:`Results` is what the CLI, the demo, validation, scoring, the report and every dock read through: it
owns the target space (:class:`~napari_mine.spaces.VolumeSpace`), the encoder's arrays, the features and token contributions (a
bounded chunk cache), the stimuli, the backbone and the concept spaces, and answers the MINE queries
(prediction, top images, patch maps, descriptions, profiles, ROI reports). The maths modules stay
array-in, array-out; a query here reads what it needs and calls them.

A target is an index into the space (a voxel of the mask today; a surface vertex is another space class
with the same methods): only the space knows where a target lies and how it is drawn.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from napari_mine.errors import MineInputError
from napari_mine.spaces import SurfaceSpace, VolumeSpace

FORMAT = "napari-mine-results"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKEN_CACHE_BYTES = 512 * 2**20  # token chunks kept per session, as float32 (a slider revisits the same ones)
SAVED_PROFILES_BYTES = 512 * 2**20  # saved scores + baselines up to this are held in memory, larger read by rows
CONCEPTS_DIR = "concepts"  # text embeddings of vocabularies by this folder's model (model id, vocabulary digest)
OPEN_SESSIONS = 4  # read sessions kept by open_results (each holds its weights, features and token chunks)
READ_WORKERS = 4  # token chunks decompressed at once by target_maps
LOADED_BACKBONES = 2  # backbones kept loaded by shared_backbone


# ------------------------------------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class ModelRecord:
    """What identifies the backbone that made a results folder (``id`` is checked on every reuse)."""

    id: str
    name: str
    pretrained: str | None
    checksum: str
    embed_dim: int
    image_size: int
    checkpoint: str | None = None  # the local weights file the features were computed from, if any

    @classmethod
    def parse(cls, payload: Mapping) -> "ModelRecord":
        return cls(str(payload["id"]), str(payload.get("name", "")), payload.get("pretrained"),
                   str(payload.get("checksum", "")), int(payload.get("embed_dim", 0)), int(payload.get("image_size", 0)),
                   payload.get("checkpoint"))

    def to_dict(self) -> dict:
        record = {"id": self.id, "name": self.name, "pretrained": self.pretrained, "checksum": self.checksum,
                  "embed_dim": self.embed_dim, "image_size": self.image_size}
        if self.checkpoint:
            record["checkpoint"] = self.checkpoint
        return record


@dataclass(frozen=True)
class StepRecord:
    """A finished step: the settings it ran with and when it finished."""

    settings: Mapping
    finished: str


@dataclass(frozen=True)
class Manifest:
    """A results folder's manifest, parsed and checked once (format, version, model, source, steps)."""

    version: int
    created: str
    model: ModelRecord
    source: Mapping  # the dataset's source record, as its loader wrote it (data.sources reads it back)
    steps: Mapping[str, StepRecord]

    @classmethod
    def new(cls, model: Mapping, source: Mapping, created: str) -> "Manifest":
        return cls(FORMAT_VERSION, created, ModelRecord.parse(model), MappingProxyType(dict(source)),
                   MappingProxyType({}))

    @classmethod
    def read(cls, root: str | os.PathLike) -> "Manifest":
        """Parse ``root/manifest.json``, refusing folders that are not results or of another format version."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise MineInputError(f"{root} is not a napari-mine results folder (no {MANIFEST}); run "
                                 "`napari-mine features` and `napari-mine fit` to make one.")
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MineInputError(f"{path} cannot be read as JSON ({error}); recompute the results.") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise MineInputError(f"{path} is not a napari-mine manifest; open a folder made by napari-mine.")
        if payload.get("version") != FORMAT_VERSION:
            raise MineInputError(
                f"{root} was written in results format {payload.get('version')}, this napari-mine reads "
                f"format {FORMAT_VERSION}; recompute it with `napari-mine features` and `napari-mine fit`."
            )
        try:
            steps = {name: StepRecord(MappingProxyType(dict(step.get("settings") or {})), str(step["finished"]))
                     for name, step in payload["steps"].items()}
            return cls(int(payload["version"]), str(payload.get("created", "")), ModelRecord.parse(payload["model"]),
                       MappingProxyType(dict(payload.get("dataset") or {})), MappingProxyType(steps))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise MineInputError(f"{path} is incomplete ({type(error).__name__}: {error}); recompute the "
                                 "results with `napari-mine features`.") from None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "created": self.created, "model": self.model.to_dict(),
                "dataset": dict(self.source),
                "steps": {name: {"settings": dict(step.settings), "finished": step.finished}
                          for name, step in self.steps.items()}}

    def with_step(self, name: str, settings: Mapping, finished: str) -> "Manifest":
        steps = dict(self.steps)
        steps[name] = StepRecord(MappingProxyType(dict(settings)), finished)
        return replace(self, steps=MappingProxyType(steps))

    def with_checkpoint(self, checkpoint: str | None) -> "Manifest":
        return replace(self, model=replace(self.model, checkpoint=checkpoint))

    def has(self, step: str) -> bool:
        return step in self.steps

    def settings(self, step: str) -> Mapping:
        """A finished step's settings ({} when the step has not run)."""
        return self.steps[step].settings if step in self.steps else MappingProxyType({})

    @property
    def roi_labels(self) -> dict[str, dict[int, str]]:
        """Each ROI volume's label table, ``{roi: {value: name}}``."""
        tables = self.settings("brain").get("roi_labels", {})
        return {roi: {int(k): str(v) for k, v in table.items()} for roi, table in tables.items()}

    @property
    def surface(self):
        """The :class:`~napari_mine.spaces.SurfaceLayout` of surface results, None for a volume."""
        from napari_mine.spaces import SurfaceLayout

        record = self.settings("brain").get("space")
        return SurfaceLayout.parse(record) if record and record.get("kind") == "surface" else None

    @property
    def source_format(self) -> str | None:
        return self.source.get("format")

    @property
    def world_root(self) -> Path | None:
        """The synthetic world this folder was computed from (its ground truth beside it), else None."""
        root = self.source.get("root")
        return Path(root) if root and (Path(root) / "ground_truth").is_dir() else None


# ------------------------------------------------------------------------------------------------ spaces


@dataclass(frozen=True)
class TargetInfo:
    """Where a target lies and how well the encoder predicts it."""

    target: int
    ijk: tuple[int, ...]
    world: tuple[float, ...]
    rois: tuple[str, ...]
    r: float | None
    normalized_r: float | None
    noise_ceiling: float | None


# ------------------------------------------------------------------------------------------------ answers


@dataclass
class ImageAttribution:
    """A target's exact patch map on one image, with what its numbers mean."""

    target: int
    row: int
    grid_map: np.ndarray  # (g, g) contribution of each patch to the predicted response
    predicted: float  # the encoder's prediction for this image (patches + class token + rest + bias)
    spatial_fraction: float  # share of |terms| carried by the patches
    description: str = ""  # what drives the target in this image's high-attribution region
    concepts: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class TargetReport:
    """Everything the inspector shows for one target (the image part for one stimulus)."""

    info: TargetInfo
    top_rows: np.ndarray
    top_values: np.ndarray
    thumbnails: list[np.ndarray]
    image: ImageAttribution | None
    profile: list[tuple[str, float]] = field(default_factory=list)
    vocabulary: str = ""


@dataclass
class RoiReport:
    """An ROI label's mean profile and its targets' sub-populations."""

    roi: str
    label: str
    n_targets: int
    profile: list[tuple[str, float]]
    baseline: list[tuple[str, float]]
    clusters: np.ndarray  # int16 volume: 0 outside the ROI label, 1..k sub-populations (largest first)
    cluster_profiles: list[list[tuple[str, float]]]
    cluster_sizes: list[int]
    silhouettes: dict[int, float]
    vocabulary: str


# ------------------------------------------------------------------------------------------------ the session


class Results:
    """A read session over one results folder: thread-safe, reads each small array once, tokens by chunk."""

    def __init__(self, root: str | os.PathLike, manifest: Manifest):
        self.root = Path(root)
        self.manifest = manifest
        self._lock = threading.RLock()
        self._cache: dict = {}
        self._token_chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._space: VolumeSpace | None = None
        self._chunks_lock = threading.Lock()  # held for dictionary updates only, never during a read
        self._concepts_lock = threading.Lock()  # one embedding of a vocabulary at a time, not one per caller

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Results":
        """Open a results folder (its manifest parsed and checked once); nothing large is read yet."""
        return cls(root, Manifest.read(root))

    # ---- steps and arrays -----------------------------------------------------------------------
    def has(self, step: str) -> bool:
        return self.manifest.has(step)

    def require(self, step: str, hint: str) -> None:
        if not self.has(step):
            raise MineInputError(f"{self.root} has no {step!r} results yet; {hint}")

    @property
    def is_fitted(self) -> bool:
        return self.has("features") and self.has("encoder")

    def require_fit(self) -> None:
        if not self.is_fitted:
            raise MineInputError(f"{self.root.name} has no fitted encoder yet; run Fit (or `napari-mine fit`) first.")

    def group(self, step: str):
        """The zarr group of a finished step, read-only and lazy."""
        import zarr

        self.require(step, "compute it first.")
        return zarr.open_group(self.root / f"{step}.zarr", mode="r")

    def _array(self, step: str, name: str, dtype=None) -> np.ndarray:
        """A whole array of a step, read once per session."""
        key = ("array", step, name)
        if key in self._cache:  # read: no lock, so a query on loaded arrays never waits for another's read
            return self._cache[key]
        with self._lock:
            if key not in self._cache and step == "features" and name in ("features", "rest") and self.shared_stimuli:
                stimuli, rows = self.shared_stimuli
                self._cache[key] = _read_only(stimuli._array(step, name, dtype)[rows])
            if key not in self._cache:
                group = self.group(step)
                if name not in group:
                    raise MineInputError(f"the {step!r} results in {self.root} have no {name!r} array; recompute "
                                         "that step.")
                self._cache[key] = _read_only(np.asarray(group[name][...], dtype=dtype))
            return self._cache[key]

    def check_model(self, model_id: str) -> None:
        """Refuse to mix these results with a model other than the one that made them."""
        if model_id != self.manifest.model.id:
            raise MineInputError(
                f"{self.root} was computed with model {self.manifest.model.id!r} but {model_id!r} is loaded; load "
                "that model or recompute the results with this one."
            )

    # ---- the brain -------------------------------------------------------------------------------
    @property
    def space(self) -> VolumeSpace | SurfaceSpace:
        """The target space (mask, affine or surface layout, ROI label arrays with their label tables)."""
        if self._space is not None:
            return self._space
        with self._lock:
            if self._space is None:
                self.require("brain", "compute the features of a dataset first.")
                brain = self.group("brain")
                tables = self.manifest.roi_labels
                rois = {}
                if "roi" in brain:
                    for name in sorted(brain["roi"].array_keys()):
                        rois[name] = (np.asarray(brain["roi"][name][...]), tables.get(name, {}))
                layout = self.manifest.surface
                if layout is None:
                    self._space = VolumeSpace(brain["mask"][...], brain["affine"][...], rois)
                else:
                    self._space = SurfaceSpace(brain["mask"][...], rois, layout)
            return self._space

    def fsaverage_projection(self):
        """NSD's volume → fsaverage transforms for these volume results (:mod:`napari_mine.projection`)."""
        from napari_mine.projection import nsd_projection

        source = self.manifest.source
        if self.space.kind != "volume" or self.manifest.source_format != "nsd":
            raise MineInputError(f"{self.root} holds {self.space.kind} results of a {self.manifest.source_format} "
                                 "dataset; only volume results of an NSD subject project onto fsaverage.")
        with self._lock:
            if "projection" not in self._cache:
                self._cache["projection"] = nsd_projection(source["root"], int(source["subject"]),
                                                           self.space.mask.shape)
            return self._cache["projection"]

    def on_fsaverage(self, values, labels: bool = False) -> np.ndarray:
        """Per-target values (a voxel map) carried onto every fsaverage vertex, lh then rh."""
        return self.fsaverage_projection().project(self.space.unmask(values, fill=0 if labels else np.nan), labels)

    @property
    def n_targets(self) -> int:
        """The encoder's targets (its weight columns), else the space's."""
        return int(self.weights()[0].shape[1]) if self.is_fitted else self.space.n_targets

    def anatomy(self) -> np.ndarray | None:
        brain = self.group("brain")
        return np.asarray(brain["anatomy"][...], dtype=np.float32) if "anatomy" in brain else None

    @property
    def accuracy(self) -> dict[str, np.ndarray]:
        """Held-out "r", "normalized_r" and "noise_ceiling" per target (those the fit computed)."""
        if not self.has("encoder"):
            return {}
        if "accuracy" in self._cache:
            return self._cache["accuracy"]
        with self._lock:
            if "accuracy" not in self._cache:
                encoder = self.group("encoder")
                self._cache["accuracy"] = {name: np.asarray(encoder[f"accuracy/{name}"][...], dtype=np.float32)
                                           for name in ("r", "normalized_r", "noise_ceiling")
                                           if f"accuracy/{name}" in encoder}
            return self._cache["accuracy"]

    def info(self, target: int) -> TargetInfo:
        space = self.space

        def value(name):
            values = self.accuracy.get(name)
            return None if values is None or not np.isfinite(values[target]) else float(values[target])

        return TargetInfo(int(target), space.ijk_of(target), space.world_of(target), space.roi_names_of(target),
                          value("r"), value("normalized_r"), value("noise_ceiling"))

    # ---- encoder and features ---------------------------------------------------------------------
    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Effective weights W̃ (D, V) and bias b̃ (V,): the encoder acting on the normalised embedding."""
        self.require_fit()
        return (self._array("encoder", "effective_weights", np.float32),
                self._array("encoder", "effective_bias", np.float32))

    @property
    def encoder(self):
        """The fitted :class:`~napari_mine.encoding.VoxelEncoder` (standardisation and per-target α)."""
        from napari_mine.encoding import VoxelEncoder

        with self._lock:
            if "encoder" not in self._cache:
                self._cache["encoder"] = VoxelEncoder.from_arrays(self.group("encoder"))
            return self._cache["encoder"]

    def features(self) -> np.ndarray:
        """The L2-normalised image features (N, D)."""
        self.require("features", "run `napari-mine features` first.")
        return self._array("features", "features", np.float32)

    def rest(self) -> np.ndarray:
        """The non-spatial part of every image's features (N, D)."""
        self.require("features", "run `napari-mine features` first.")
        return self._array("features", "rest", np.float32)

    @property
    def image_ids(self) -> np.ndarray:
        """The stimulus id of each feature row."""
        return self._array("features", "image_ids").astype(np.int64)

    @property
    def n_images(self) -> int:
        return len(self.image_ids) if self.shared_stimuli else int(self._tokens_array().shape[0])

    @property
    def shared_stimuli(self) -> "tuple[Results, np.ndarray] | None":
        """A study subject's features live once per stimulus in the study's stimulus folder (DESIGN.md §10):
        that folder's read session and this folder's rows in it; None when the features are this folder's own."""
        if "shared_stimuli" in self._cache:
            return self._cache["shared_stimuli"]
        with self._lock:
            if "shared_stimuli" not in self._cache:
                folder = self.manifest.settings("features").get("shared_stimuli")
                shared = None
                if folder:
                    stimuli = open_results(self.root / folder)
                    stimuli.require("features", "run `napari-mine features` on the study again.")
                    if self.manifest.settings("features").get("stimuli_finished") != \
                            stimuli.manifest.steps["features"].finished:
                        raise MineInputError(f"the study's stimulus features in {stimuli.root} were recomputed after "
                                             f"{self.root.name}'s; run `napari-mine features` on the study again.")
                    shared = (stimuli, self._array("features", "stimulus_rows").astype(np.int64))
                self._cache["shared_stimuli"] = shared
            return self._cache["shared_stimuli"]

    def predict(self, targets=None, rows=None) -> np.ndarray:
        """The encoder's predictions ``f @ w̃ + b̃`` (n_rows, n_targets) from the stored features."""
        weights, bias = self.weights()
        features = self.features() if rows is None else self.features()[np.asarray(rows, dtype=int)]
        if targets is None:
            return features @ weights + bias
        targets = self.checked_targets(targets)
        return features @ weights[:, targets] + bias[targets]

    def checked_targets(self, targets) -> np.ndarray:
        """Target indices (or a boolean selection over all targets), refused when out of range."""
        n = self.n_targets
        if targets is None:
            return np.arange(n)
        targets = np.asarray(targets).ravel()
        if targets.dtype == bool:
            if len(targets) != n:
                raise MineInputError(f"A target selection mask needs {n} entries, got {len(targets)}; give one "
                                     "entry per target or target indices.")
            targets = np.flatnonzero(targets)
        if not targets.size or not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 or targets.max() >= n:
            bad = targets[(targets < 0) | (targets >= n)] if np.issubdtype(targets.dtype, np.integer) else targets
            raise MineInputError(f"voxel {bad[0] if bad.size else 'selection'} is out of range; the store has voxels 0 "
                                 f"to {n - 1}.")
        return targets.astype(int)

    def checked_row(self, row) -> int:
        n = self.n_images
        if not isinstance(row, (int, np.integer)) or isinstance(row, bool) or not 0 <= row < n:
            raise MineInputError(f"image row {row!r} is out of range; the store has images 0 to {n - 1}.")
        return int(row)

    def tokens(self, rows) -> np.ndarray:
        """Token contributions of image rows (n, T, D), through a bounded cache of storage chunks.

        A row costs the read of its whole storage chunk (8 MB; decompressed too in folders written before the
        cache was stored uncompressed, widened from float16 in a float16 cache), so chunks are kept (least
        recently used out first, about ``TOKEN_CACHE_BYTES``): a slider or clicks on targets that share top
        images read each chunk once.
        """
        rows = np.asarray(rows, dtype=int)
        if self.shared_stimuli:
            stimuli, stimulus_rows = self.shared_stimuli
            return stimuli.tokens(stimulus_rows[rows])
        array = self._tokens_array()
        step = array.chunks[0]
        out = np.empty((len(rows),) + tuple(array.shape[1:]), dtype=np.float32)
        for chunk in np.unique(rows // step):
            block = self._token_chunk(array, int(chunk), step)
            chosen = rows // step == chunk
            out[chosen] = block[rows[chosen] - chunk * step]
        return out

    def _tokens_array(self):
        if "tokens" in self._cache:
            return self._cache["tokens"]
        self.require("features", "run `napari-mine features` first.")
        with self._lock:
            if "tokens" not in self._cache:
                self._cache["tokens"] = self.group("features")["tokens"]
            return self._cache["tokens"]

    def _token_chunk(self, array, chunk: int, step: int) -> np.ndarray:
        with self._chunks_lock:
            if chunk in self._token_chunks:
                self._token_chunks.move_to_end(chunk)
                return self._token_chunks[chunk]
        block = _float32_tokens(array[chunk * step:(chunk + 1) * step])
        with self._chunks_lock:
            self._token_chunks[chunk] = block
            while len(self._token_chunks) > 1 and \
                    sum(b.nbytes for b in self._token_chunks.values()) > TOKEN_CACHE_BYTES:
                self._token_chunks.popitem(last=False)
        return block

    # ---- data, stimuli and models ---------------------------------------------------------------
    def dataset(self):
        """The dataset these results were computed from, loaded again from the manifest's source record."""
        from napari_mine.data import dataset_from_source

        with self._lock:
            if "dataset" not in self._cache:
                if not self.manifest.source:
                    raise MineInputError("the manifest names no dataset; recompute the features with "
                                         "`napari-mine features`.")
                self._cache["dataset"] = dataset_from_source(dict(self.manifest.source))
            return self._cache["dataset"]

    def keep_dataset(self, dataset) -> None:
        """Use an already loaded dataset for this session (a fit right after loading reads no betas again)."""
        with self._lock:
            self._cache["dataset"] = dataset

    @property
    def images(self):
        """The stimulus images in feature-row order (lazy).

        NSD-layout sources (the synthetic world included) are opened from the stimulus brick and the stored
        image ids alone, without reading any betas; other sources are reopened through their loader.
        """
        if "images" in self._cache:
            return self._cache["images"]
        with self._lock:
            if "images" not in self._cache:
                self._cache["images"] = self._open_images()
            return self._cache["images"]

    def _open_images(self):
        source = self.manifest.source
        if not source:
            raise MineInputError("the manifest names no dataset; recompute the features with `napari-mine features`.")
        if self.manifest.source_format == "nsd" and self.has("features"):
            from napari_mine.data import ImageStore
            from napari_mine.data.nsd import NsdTree

            tree = NsdTree(source["root"], int(source.get("subject", 1)))
            stimuli = tree.require("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
            return ImageStore.from_hdf5(stimuli, self.image_ids)
        if self.manifest.source_format == "generic" and "dataset" not in self._cache:
            from napari_mine.data.generic import open_generic_images

            return open_generic_images(source)
        return self.dataset().images

    def backbone(self, checkpoint: str | os.PathLike | None = None, device: str = "auto"):
        """The backbone that made these results, loaded once per session and checked against the record.

        A checkpoint recorded at feature time is reused when no other is given; a file whose weights have
        another checksum is refused.
        """
        record = self.manifest.model
        checkpoint = checkpoint or record.checkpoint
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file() and checkpoint == record.checkpoint:
            raise MineInputError(f"{self.root} was computed from the weights file {checkpoint}, which is no longer "
                                 "there; pass the file's new place (--checkpoint PATH, or Data & model's checkpoint).")
        backbone = shared_backbone(record.name, record.pretrained, checkpoint, device)
        self.check_model(backbone.record["id"])
        return backbone

    def default_vocabulary(self) -> str:
        """The vocabulary the profiles used, else "synthetic" for the synthetic world, else "general"."""
        used = self.manifest.settings("profiles").get("vocabulary")
        if used:
            return used
        return "synthetic" if self.manifest.world_root is not None else "general"

    def concept_space(self, name: str | None = None, checkpoint: str | None = None, *, on_progress=None,
                      should_stop=None):
        """A vocabulary ("synthetic", "general" or a file) embedded by this folder's own model.

        The text embeddings are read from the folder's ``concepts/`` (or the user cache) when this model
        embedded the vocabulary before, so no backbone loads; otherwise the backbone embeds it once and the
        embeddings are stored in the folder. Concurrent callers wait for one computation. While embedding,
        ``on_progress(done, total)`` is called in prompts after each batch of text (not at all when cached), and
        ``should_stop()`` is checked then: a stop raises :class:`~napari_mine.errors.Cancelled`, caching nothing.
        """
        from napari_mine.vocabulary import ConceptSpace, cached_embeddings, embed_vocabulary, vocabulary_named

        name = name or self.default_vocabulary()
        key = ("space", name)
        if key in self._cache:
            return self._cache[key]
        with self._concepts_lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            vocabulary = vocabulary_named(name)
            model_id = self.manifest.model.id
            embeddings = cached_embeddings(vocabulary, model_id, self.root / CONCEPTS_DIR)
            if embeddings is None:
                embeddings = cached_embeddings(vocabulary, model_id)
                if embeddings is None:
                    report = _stoppable(on_progress, should_stop, "vocabulary embedding")
                    embeddings = embed_vocabulary(vocabulary, self.backbone(checkpoint), on_progress=report)
                space = ConceptSpace.from_embeddings(vocabulary, embeddings, model_id)
                self.keep_concept_space(space)
            else:
                space = ConceptSpace.from_embeddings(vocabulary, embeddings, model_id)
            with self._lock:
                self._cache[key] = space
            return space

    def keep_concept_space(self, space) -> None:
        """Store a concept space's text embeddings in the folder, where every later session reads them.

        A folder that cannot be written (read-only media) keeps nothing: the user cache still has them.
        """
        from napari_mine.vocabulary import save_embeddings

        self.check_model(space.model_id)
        try:
            save_embeddings(space.embeddings, space.vocabulary, space.model_id, self.root / CONCEPTS_DIR)
        except OSError:
            pass

    def loaded(self, rows=(), vocabulary: str | None = None) -> bool:
        """Whether the space, the encoder, the token chunks of ``rows`` and the vocabulary's concept space are
        in memory: a query over them then takes milliseconds."""
        cache = self._cache
        needed = [("space", vocabulary or self.default_vocabulary()), ("array", "encoder", "effective_weights"),
                  ("array", "encoder", "effective_bias"), ("array", "features", "features"),
                  ("array", "features", "rest"), "accuracy"]
        return self._space is not None and all(key in cache for key in needed) and self.tokens_loaded(rows)

    def profile_loaded(self, target: int, vocabulary: str | None = None) -> bool:
        """Whether a target's profile reads nothing: the saved profiles of the vocabulary are in memory, or
        there are none and the tokens of the target's top images are (call after :meth:`loaded`)."""
        from napari_mine.describe import DEFAULT_TOP_K

        space = self._cache[("space", vocabulary or self.default_vocabulary())]
        if self.manifest.settings("profiles").get("vocabulary_digest") == space.vocabulary.digest:
            return isinstance(getattr(self._cache.get("profiles"), "scores", None), np.ndarray)
        return self.tokens_loaded(self.top_images(target, DEFAULT_TOP_K)[0])

    def tokens_loaded(self, rows) -> bool:
        """Whether the token chunks of image ``rows`` are in memory."""
        if self._cache.get("shared_stimuli"):
            stimuli, stimulus_rows = self._cache["shared_stimuli"]
            return stimuli.tokens_loaded(stimulus_rows[np.asarray(rows, dtype=int)])
        array = self._cache.get("tokens")
        if array is None:
            return False
        step = array.chunks[0]
        chunks = self._token_chunks
        return all(int(row) // step in chunks for row in rows)

    @property
    def tokens_per_image(self) -> int:
        """Tokens T of each image in the token cache (1 + g² patches for a ViT), read from its shape."""
        if self.shared_stimuli:
            return self.shared_stimuli[0].tokens_per_image
        return int(self._tokens_array().shape[1])

    @property
    def token_rows_per_chunk(self) -> int:
        """Image rows per storage chunk of the token cache (reading one row reads its chunk)."""
        if self.shared_stimuli:
            return self.shared_stimuli[0].token_rows_per_chunk
        return int(self._tokens_array().chunks[0])

    # ---- queries ---------------------------------------------------------------------------------
    def top_images(self, target: int, k: int = 10, by: str = "predicted", responses=None):
        """The ``k`` rows that drive a target most, by predicted or by measured response, highest first.

        Returns
        -------
        rows : int array (≤ k,)
        values : float array (≤ k,)
            The responses they were ranked by.
        """
        target = int(self.checked_targets([target])[0])
        if int(k) < 1:
            raise MineInputError(f"k={k} images were asked for; ask for at least one.")
        if by == "predicted":
            values = self.predict([target])[:, 0]
        elif by == "measured":
            values = _measured_column(responses, self.n_images, self.n_targets, target)
        else:
            raise MineInputError(f"unknown ranking {by!r}; use by='predicted' or by='measured'.")
        valid = np.flatnonzero(np.isfinite(values))
        rows = valid[np.argsort(-values[valid], kind="stable")[: int(k)]]
        return rows, values[rows]

    def image_map(self, target: int, row: int, space=None) -> ImageAttribution:
        """The exact patch map of ``target`` on image ``row``; with a concept space, its description too."""
        from napari_mine.attribution import patch_attribution, spatial_fraction, to_patch_grid

        row = self.checked_row(row)
        target = int(self.checked_targets([target])[0])
        weights, bias = self.weights()
        tokens = self.tokens([row])[0]
        w, b = weights[:, target], float(bias[target])
        scores = patch_attribution(tokens, w)
        predicted = float(scores.sum() + self.rest()[row] @ w + b)
        fraction = float(np.squeeze(spatial_fraction(tokens, self.rest()[row], w, b)))
        result = ImageAttribution(target, row, to_patch_grid(scores), predicted, fraction)
        if space is not None:
            description = self.describe(row, target, space, tokens=tokens)
            result.description = description.text
            result.concepts = [(c, float(v)) for c, v in zip(description.concepts, description.scores)]
        return result

    def whole_brain_map(self, row: int, grid: bool = True) -> np.ndarray:
        """The attribution of one image for every target, ``C(x) W̃``: (g, g, V), or (T, V) token scores."""
        from napari_mine.attribution import patch_attribution, to_patch_grid

        scores = patch_attribution(self.tokens([self.checked_row(row)])[0], self.weights()[0])
        return to_patch_grid(scores, axis=0) if grid else scores

    def target_maps(self, target: int, workers: int | None = None) -> np.ndarray:
        """One target's patch maps over every image, ``C · w̃_v`` (N, g, g).

        Each storage chunk is read and projected on its own by a few threads at once (decompressing chunk by
        chunk in parallel reads several times faster than one large read), so memory holds about
        ``workers`` chunks however many images there are.
        """
        from concurrent.futures import ThreadPoolExecutor

        from napari_mine.attribution import patch_attribution, to_patch_grid

        target = int(self.checked_targets([target])[0])
        weight = self.weights()[0][:, target]
        if self.shared_stimuli:  # a study subject's rows are scattered over the stimulus folder's chunks
            step = self.token_rows_per_chunk
            return to_patch_grid(np.concatenate([
                patch_attribution(self.tokens(np.arange(start, min(start + step, self.n_images))), weight)
                for start in range(0, self.n_images, step)]))
        tokens = self._tokens_array()
        step = tokens.chunks[0]
        with ThreadPoolExecutor(workers or min(READ_WORKERS, os.cpu_count() or 1)) as pool:
            parts = pool.map(lambda start: patch_attribution(_float32_tokens(tokens[start:start + step]), weight),
                             range(0, tokens.shape[0], step))
            return to_patch_grid(np.concatenate(list(parts)))

    def describe(self, row: int, target: int, space, *, tokens=None, **options):
        """:func:`describe.describe_image` of ``target`` on image ``row``."""
        from napari_mine.describe import describe_image

        self.check_model(space.model_id)
        row = self.checked_row(row)
        target = int(self.checked_targets([target])[0])
        tokens = self.tokens([row])[0] if tokens is None else tokens
        return describe_image(tokens, self.weights()[0][:, target], space, **options)

    def saved_profiles(self, space):
        """The profiles step's results when they were computed in ``space``'s vocabulary, else None.

        Scores and baselines (targets × concepts: 10.7 GB at 327,684 vertices × 4,086 concepts) start as zarr
        arrays that ``scores[rows]`` reads by rows, so a first click reads one chunk, not all of them; up to
        ``SAVED_PROFILES_BYTES`` they are then held in memory by :meth:`hold_saved_profiles` (the viewer's
        preload), after which a click reads nothing. Top images, region masses and voxels (a few numbers per
        target) are read whole.
        """
        from napari_mine.describe import VoxelProfiles

        if not self.has("profiles") or self.manifest.settings("profiles").get("vocabulary_digest") != \
                space.vocabulary.digest:
            return None
        if "profiles" in self._cache:
            return self._cache["profiles"]
        with self._lock:
            if "profiles" not in self._cache:
                group = self.group("profiles")
                arrays = {name: np.asarray(group[name][...]) for name in ("top_images", "region_mass", "voxels")}
                self._cache["profiles"] = VoxelProfiles(tuple(group.attrs["concepts"]), group["scores"],
                                                        group["baseline"], **arrays)
            return self._cache["profiles"]

    def hold_saved_profiles(self, space) -> bool:
        """Read the saved scores and baselines into memory when they fit in ``SAVED_PROFILES_BYTES``; whether
        they are held. The read runs outside the session's lock: queries meanwhile read their rows from disk."""
        saved = self.saved_profiles(space)
        if saved is None or isinstance(saved.scores, np.ndarray):
            return saved is not None
        if saved.scores.nbytes + saved.baseline.nbytes > SAVED_PROFILES_BYTES:
            return False
        held = replace(saved, scores=_read_by_chunks(saved.scores), baseline=_read_by_chunks(saved.baseline))
        with self._lock:
            if self._cache.get("profiles") is saved:
                self._cache["profiles"] = held
        return True

    def profiles(self, space, targets=None, *, top_k: int | None = None, mass: float | None = None,
                 use_saved: bool = True, block: int | None = None):
        """Profiles (VoxelProfiles) of ``targets`` (default all): the saved ones when they cover them, else
        computed in blocks of targets, each reading its top images' tokens a batch of images at a time."""
        from napari_mine import describe

        self.check_model(space.model_id)
        targets = self.checked_targets(targets)
        saved = self.saved_profiles(space) if use_saved and top_k is None and mass is None else None
        if saved is not None:
            rows = np.searchsorted(saved.voxels, targets)
            inside = np.minimum(rows, len(saved.voxels) - 1)
            if np.all(rows < len(saved.voxels)) and np.array_equal(saved.voxels[inside], targets):
                return describe.VoxelProfiles(saved.concepts, saved.scores[rows], saved.baseline[rows],
                                              saved.top_images[:, rows], saved.region_mass[rows], targets)
        weights, _ = self.weights()
        tokens = _TokenRows(self)
        step = block or describe.STORE_VOXEL_BLOCK
        blocks = []
        for start in range(0, len(targets), step):
            chunk = targets[start:start + step]
            top = describe.top_images(self.predict(chunk), top_k or describe.DEFAULT_TOP_K)
            blocks.append(describe.voxel_profiles(tokens, weights[:, chunk], top, space, voxels=chunk,
                                                  mass=describe.DEFAULT_MASS if mass is None else mass))
        return describe.VoxelProfiles(space.vocabulary.concepts, np.concatenate([b.scores for b in blocks]),
                                      np.concatenate([b.baseline for b in blocks]),
                                      np.concatenate([b.top_images for b in blocks], axis=1),
                                      np.concatenate([b.region_mass for b in blocks]), targets)

    def roi_profiles(self, profiles, roi: str) -> dict[str, np.ndarray]:
        """Mean profile of each label of ROI volume ``roi`` (e.g. "floc-faces" → FFA-1, FFA-2, …), from the
        rows of the ROI's targets only."""
        from napari_mine.describe import roi_profiles

        values = self.space.roi_values(roi)[profiles.voxels]
        names = self.space.rois[roi][1]
        rows = np.flatnonzero(np.isin(values, list(names)))
        return roi_profiles(profiles.scores[rows], values[rows], names)

    def roi_clusters(self, profiles, roi: str, label: int | str, *, k_range=None, seed: int = 0):
        """Cluster the profiles of one ROI label's targets (only their rows are read): (Clustering, the targets
        clustered)."""
        from napari_mine.describe import DEFAULT_K_RANGE, cluster_voxels

        value = self.space.label_value(roi, label)
        rows = np.flatnonzero(self.space.roi_values(roi)[profiles.voxels] == value)
        return cluster_voxels(profiles.scores[rows], k_range or DEFAULT_K_RANGE, seed), profiles.voxels[rows]

    def saved_clusters(self) -> dict[str, np.ndarray]:
        """The sub-populations the profiles step wrote, ``{ROI label: (n_targets,) int}`` (0 outside, 1..k)."""
        import nibabel as nib

        self.require("profiles", "run `napari-mine profile` first.")
        space = self.space
        clusters = {}
        for path in sorted((self.root / "clusters").glob("*")):
            suffix = next((s for s in (".nii.gz", ".mgz") if path.name.endswith(s)), None)  # volume or surface
            if suffix is not None and not path.name.startswith("."):
                sites = np.asarray(nib.load(path).dataobj).reshape(space.mask.shape)
                clusters[path.name[: -len(suffix)]] = sites[space.mask].astype(np.int32)
        return clusters

    def report(self, target: int, row: int | None, k: int, space=None, *, shown_rows=()) -> TargetReport:
        """The whole inspector panel for a target: info, top images, profile and the map on image ``row``.

        Top images among ``shown_rows`` (thumbnails the caller already has) are not read: None in their place.
        """
        info = self.info(target)
        if not self.is_fitted:
            return TargetReport(info, np.zeros(0, int), np.zeros(0), [], None)
        rows, values = self.top_images(target, k)
        images = self.images  # one read per image: h5py's fancy indexing of scattered rows is ~10x slower
        shown = set(int(r) for r in shown_rows)
        thumbnails = [None if int(r) in shown else images[int(r)] for r in rows]
        image = None if row is None else self.image_map(target, row, space)
        profile = [] if space is None else self.profiles(space, [target]).ranked(0, 10)
        return TargetReport(info, rows, values, thumbnails, image, profile, "" if space is None else space.vocabulary.name)

    def roi_report(self, roi: str, label: int, space, k_range=(2, 6), seed: int = 0) -> RoiReport:
        """Mean profile of one ROI label, and its targets clustered by profile into sub-populations."""
        from napari_mine.describe import cluster_voxels, labels_volume, top_concepts

        if roi not in self.space.rois:
            raise MineInputError(f"{self.root.name} has no ROI volume {roi!r}; choose one of {sorted(self.space.rois)}.")
        name = self.space.rois[roi][1].get(label, f"{roi}-{label}")
        targets = np.flatnonzero(self.space.roi_values(roi) == label)
        if targets.size < 3:
            raise MineInputError(f"{name} has {targets.size} voxels inside the mask; choose a larger ROI.")
        profiles = self.profiles(space, targets)
        concepts = profiles.concepts
        clustering = cluster_voxels(profiles.scores, k_range=k_range, seed=seed)
        clusters = labels_volume(clustering.labels, self.space.mask, targets)
        cluster_profiles, sizes = [], []
        for cluster in range(1, clustering.k + 1):
            members = clustering.labels == cluster
            sizes.append(int(members.sum()))
            cluster_profiles.append(top_concepts(profiles.scores[members].mean(axis=0), concepts, 3))
        return RoiReport(roi, name, int(targets.size), top_concepts(profiles.scores.mean(axis=0), concepts, 10),
                         top_concepts(profiles.baseline.mean(axis=0), concepts, 10), clusters, cluster_profiles,
                         sizes, clustering.silhouettes, space.vocabulary.name)


def _read_by_chunks(array) -> np.ndarray:
    """A zarr array read whole, one row of chunks per read: a query reading a few rows meanwhile waits for one
    chunk's read, not for all of them (zarr queues the chunks of one read before any later read's)."""
    values = np.empty(array.shape, array.dtype)
    step = array.chunks[0]
    for start in range(0, array.shape[0], step):
        values[start:start + step] = array[start:start + step]
    return values


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


class _TokenRows:
    """A session's token cache as an array of image rows (``rows[i]``, read through the chunk cache): what
    ``describe.voxel_profiles`` reads a batch of top images at a time from, so a block of targets never holds
    all its top images' tokens (10,000 images × 197 × 512 float32: 4 GB) at once."""

    def __init__(self, results: Results):
        self._results = results

    def __getitem__(self, rows) -> np.ndarray:
        return self._results.tokens(rows)


def _float32_tokens(block: np.ndarray) -> np.ndarray:
    """Token rows as float32 whatever the cache stores; a float16 cache is widened by torch, whose vectorised
    (F16C) cast is faster than numpy's, which would take back most of what the smaller reads save."""
    if block.dtype != np.float16:
        return np.asarray(block, dtype=np.float32)
    from napari_mine.models.backbone import import_torch

    import_torch()  # safe beside a napari canvas
    import torch

    return torch.from_numpy(np.ascontiguousarray(block)).float().numpy()


def _measured_column(responses, n_images: int, n_targets: int, column: int) -> np.ndarray:
    if responses is None:
        raise MineInputError("ranking by measured response needs `responses`; pass the responses per image row "
                             "or use by='predicted'.")
    responses = np.asarray(responses, dtype=np.float64)
    if responses.shape not in ((n_images,), (n_images, n_targets)):
        raise MineInputError(f"responses of shape {responses.shape} do not match the {n_images} images and "
                             f"{n_targets} targets; pass (N,) for the target or (N, V), one row per image row.")
    return responses if responses.ndim == 1 else responses[:, column]


# ------------------------------------------------------------------------------------------------ sessions


_sessions: OrderedDict[str, tuple[tuple, Results]] = OrderedDict()
_sessions_lock = threading.Lock()


def _stoppable(on_progress, should_stop, what: str):
    """An ``on_progress(done, total)`` that reports, then raises Cancelled when ``should_stop()`` (None: neither)."""
    if on_progress is None and should_stop is None:
        return None

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total)
        if should_stop is not None and should_stop():
            from napari_mine.errors import Cancelled

            raise Cancelled(f"the {what} was cancelled at {done} of {total}; nothing was kept.")

    return report


def open_results(root: str | os.PathLike) -> Results:
    """The shared read session of ``root`` (the viewer's docks all use it), reopened whenever its manifest
    changed (a step was added); at most ``OPEN_SESSIONS`` are kept, least recently used out first."""
    root = str(Path(root).resolve())
    try:
        stat = os.stat(Path(root) / MANIFEST)
    except OSError:
        return Results.open(root)  # says why it is not a results folder
    stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    with _sessions_lock:
        cached = _sessions.get(root)
        if cached is not None and cached[0] == stamp:
            _sessions.move_to_end(root)
            return cached[1]
    session = Results.open(root)
    if cached is not None and "dataset" in cached[1]._cache:
        session.keep_dataset(cached[1]._cache["dataset"])  # a new step does not change the data it came from
    with _sessions_lock:
        _sessions[root] = (stamp, session)
        _sessions.move_to_end(root)
        while len(_sessions) > OPEN_SESSIONS:
            _sessions.popitem(last=False)
    return session


_backbones: OrderedDict[tuple, object] = OrderedDict()
_backbones_lock = threading.Lock()


def shared_backbone(name: str, pretrained: str | None = None, checkpoint: str | None = None, device: str = "auto"):
    """One loaded backbone per (name, weights, device) for the whole session, a few kept (least recent out)."""
    from napari_mine.models.backbone import load_backbone, resolve_device

    device = resolve_device(device)
    pretrained = None if checkpoint else pretrained
    key = (name, pretrained, None if checkpoint is None else str(checkpoint), device)
    with _backbones_lock:
        if key in _backbones:
            _backbones.move_to_end(key)
            return _backbones[key]
        backbone = load_backbone(name, pretrained=pretrained, checkpoint=checkpoint, device=device)
        _backbones[key] = backbone
        while len(_backbones) > LOADED_BACKBONES:
            _backbones.popitem(last=False)
        return backbone
