"""What the dock widgets read from a results store, kept in memory per store and per fit (no Qt).

A click or a slider move must answer in well under 200 ms, so the small per-store arrays (mask, voxel index
volume, ROI volumes, accuracy, effective weights) are read once and kept; the large ones (token
contributions, images) stay lazy and are read one row at a time. Every query here runs in a thread worker.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError

TOKEN_CACHE_BYTES = 512 * 2**20  # decompressed token chunks kept per store (a slider revisits the same ones)


@dataclass(frozen=True)
class VoxelInfo:
    """Where a voxel is and how well the encoder predicts it."""

    voxel: int
    ijk: tuple[int, int, int]
    world: tuple[float, float, float]
    rois: tuple[str, ...]
    r: float | None
    normalized_r: float | None
    noise_ceiling: float | None


@dataclass
class VoxelReport:
    """Everything the inspector panel shows for one voxel (the image part for one stimulus)."""

    info: VoxelInfo
    top_rows: np.ndarray
    top_values: np.ndarray
    thumbnails: list[np.ndarray]
    image: "ImageAttribution | None"
    profile: list[tuple[str, float]] = field(default_factory=list)
    vocabulary: str = ""


@dataclass
class RoiReport:
    """An ROI label's mean profile and its voxels' sub-populations."""

    roi: str
    label: str
    n_voxels: int
    profile: list[tuple[str, float]]
    baseline: list[tuple[str, float]]
    clusters: np.ndarray  # int16 (X, Y, Z): 0 outside the ROI label, 1..k sub-populations (largest first)
    cluster_profiles: list[list[tuple[str, float]]]
    cluster_sizes: list[int]
    silhouettes: dict[int, float]
    vocabulary: str


@dataclass
class ImageAttribution:
    """A voxel's exact patch map on one image, with what its numbers mean."""

    voxel: int
    row: int
    grid_map: np.ndarray  # (g, g) contribution of each patch to the predicted response
    predicted: float  # the encoder's prediction for this image (patches + class token + rest + bias)
    spatial_fraction: float  # share of |terms| carried by the patches
    description: str = ""  # what drives the voxel in this image's high-attribution region
    concepts: list[tuple[str, float]] = field(default_factory=list)


class StoreView:
    """Read-only, thread-safe access to one results store for the viewer."""

    def __init__(self, root: str | os.PathLike):
        from napari_mine.store import ResultsStore

        self.store = ResultsStore.open(root)
        self.root = self.store.root
        self.store.require("brain", "compute the features of a dataset first.")
        brain = self.store.group("brain")
        self.mask = np.asarray(brain["mask"][...], dtype=bool)
        self.affine = np.asarray(brain["affine"][...], dtype=float)
        self.columns = np.full(self.mask.shape, -1, dtype=np.int64)
        self.columns[self.mask] = np.arange(int(self.mask.sum()))
        labels = self.store.manifest["steps"]["brain"]["settings"].get("roi_labels", {})
        self.rois = {}
        if "roi" in brain:
            for name in sorted(brain["roi"].array_keys()):
                self.rois[name] = (np.asarray(brain["roi"][name][...]),
                                   {int(k): v for k, v in labels.get(name, {}).items()})
        self.has_features = self.store.has("features")
        self.has_encoder = self.store.has("encoder")
        self.accuracy = {}
        if self.has_encoder:
            encoder = self.store.group("encoder")
            for name in ("r", "normalized_r", "noise_ceiling"):
                if f"accuracy/{name}" in encoder:
                    self.accuracy[name] = np.asarray(encoder[f"accuracy/{name}"][...], dtype=np.float32)
        self._lock = threading.Lock()
        self._weights = None
        self._features = None
        self._images = None
        self._cache = {}  # read-once items: concept spaces, saved profiles, rest, the tokens array handle
        self._token_chunks: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    # ---- voxels ----------------------------------------------------------------------------------
    def voxel_at(self, ijk) -> int | None:
        """The voxel (encoder column) at integer grid indices, or None outside the grid or the mask."""
        ijk = np.asarray(ijk, dtype=np.int64)
        if ijk.shape != (3,) or np.any(ijk < 0) or np.any(ijk >= self.mask.shape):
            return None
        column = int(self.columns[tuple(ijk)])
        return column if column >= 0 else None

    def ijk_of(self, voxel: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.argwhere(self.columns == voxel)[0])

    def roi_names(self, ijk) -> tuple[str, ...]:
        """The labels of every ROI volume at ``ijk``, e.g. ("FFA-1", "nsdgeneral")."""
        names = []
        for name, (volume, labels) in self.rois.items():
            value = int(volume[tuple(ijk)])
            if value > 0:
                names.append(labels.get(value, f"{name}-{value}"))
        return tuple(names)

    def info(self, voxel: int) -> VoxelInfo:
        ijk = self.ijk_of(voxel)
        world = tuple(float(v) for v in (self.affine @ np.append(ijk, 1.0))[:3])

        def value(name):
            values = self.accuracy.get(name)
            return None if values is None or not np.isfinite(values[voxel]) else float(values[voxel])

        return VoxelInfo(voxel, ijk, world, self.roi_names(ijk), value("r"), value("normalized_r"),
                         value("noise_ceiling"))

    # ---- encoder queries -----------------------------------------------------------------------
    def _require_fit(self) -> None:
        if not (self.has_features and self.has_encoder):
            raise MineInputError(f"{self.root.name} has no fitted encoder yet; run Fit (or `napari-mine fit`) first.")

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Effective weights W̃ (D, V) and bias b̃ (V,), read once."""
        self._require_fit()
        with self._lock:
            if self._weights is None:
                encoder = self.store.group("encoder")
                self._weights = (np.asarray(encoder["effective_weights"][...], dtype=np.float32),
                                 np.asarray(encoder["effective_bias"][...], dtype=np.float32))
        return self._weights

    @property
    def images(self):
        """The stimulus images in feature-row order (lazy)."""
        from napari_mine._reader import open_stimuli

        with self._lock:
            if self._images is None:
                self._images = open_stimuli(self.store)
        return self._images

    def features(self) -> np.ndarray:
        """The L2-normalised image features (N, D), read once."""
        self._require_fit()
        with self._lock:
            if self._features is None:
                self._features = np.asarray(self.store.array("features", "features"), dtype=np.float32)
        return self._features

    def rest(self) -> np.ndarray:
        """The non-spatial part of every image's features (N, D), read once."""
        self._require_fit()
        with self._lock:
            if "rest" not in self._cache:
                self._cache["rest"] = np.asarray(self.store.array("features", "rest"), dtype=np.float32)
            return self._cache["rest"]

    def predicted(self, voxels) -> np.ndarray:
        """The encoder's predicted responses (N, len(voxels)) of every image: ``f @ w̃ + b̃``."""
        weights, bias = self.weights()
        return self.features() @ weights[:, voxels] + bias[voxels]

    def tokens(self, rows) -> np.ndarray:
        """Token contributions of image rows (n, T, D), through a cache of decompressed storage chunks.

        A row costs the decompression of its whole chunk, so chunks are kept (least recently used first
        out, about ``TOKEN_CACHE_BYTES``): moving the slider or clicking voxels that share top images reads
        each chunk once.
        """
        rows = np.asarray(rows, dtype=int)
        array = self._tokens_array()
        step = array.chunks[0]
        out = np.empty((len(rows),) + tuple(array.shape[1:]), dtype=np.float32)
        for chunk in np.unique(rows // step):
            block = self._token_chunk(array, int(chunk), step)
            chosen = rows // step == chunk
            out[chosen] = block[rows[chosen] - chunk * step]
        return out

    def _tokens_array(self):
        self._require_fit()
        with self._lock:
            if "tokens" not in self._cache:
                self._cache["tokens"] = self.store.group("features")["tokens"]
            return self._cache["tokens"]

    def _token_chunk(self, array, chunk: int, step: int) -> np.ndarray:
        with self._lock:
            if chunk in self._token_chunks:
                self._token_chunks.move_to_end(chunk)
                return self._token_chunks[chunk]
        block = np.asarray(array[chunk * step:(chunk + 1) * step], dtype=np.float32)
        with self._lock:
            self._token_chunks[chunk] = block
            while len(self._token_chunks) > 1 and \
                    sum(b.nbytes for b in self._token_chunks.values()) > TOKEN_CACHE_BYTES:
                self._token_chunks.popitem(last=False)
        return block

    def top_images(self, voxel: int, k: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The k images with the highest predicted response, with their pixels for thumbnails."""
        from napari_mine.describe import top_images

        predicted = self.predicted([voxel])
        rows = top_images(predicted, k)[:, 0]
        images = self.images  # one read per image: h5py's fancy indexing of scattered rows is ~10x slower
        return rows, predicted[rows, 0], [images[int(row)] for row in rows]

    # ---- concepts -------------------------------------------------------------------------------
    def default_vocabulary(self) -> str:
        """The vocabulary the store's profiles used, else "synthetic" for the synthetic world, else "general"."""
        manifest = self.store.manifest
        used = manifest["steps"].get("profiles", {}).get("settings", {}).get("vocabulary")
        if used:
            return used
        root = manifest.get("dataset", {}).get("root")
        return "synthetic" if root and (Path(root) / "ground_truth").is_dir() else "general"

    def concept_space(self, vocabulary: str | None = None, checkpoint: str | None = None):
        """The vocabulary embedded by the store's own model (text embeddings cached on disk)."""
        from napari_mine import vocabulary as vocabularies

        name = vocabulary or self.default_vocabulary()
        key = (name, checkpoint)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        if name == "synthetic":
            words = vocabularies.synthetic_vocabulary()
        elif name == "general":
            words = vocabularies.general_vocabulary()
        else:
            words = vocabularies.vocabulary_from_file(name)
        model = self.store.manifest["model"]
        backbone = shared_backbone(model.get("name"), model.get("pretrained"), checkpoint)
        space = vocabularies.concept_space(words, backbone)
        self.store.check_model(space.model_id)
        with self._lock:
            self._cache[key] = space
        return space

    def voxel_profile(self, voxel: int, space, n: int = 10, top_k: int | None = None) -> list[tuple[str, float]]:
        """The voxel's ranked concept profile: the store's saved profiles, else computed from its top images."""
        profiles = self.profiles([voxel], space, top_k)
        return profiles.ranked(0, n)

    def profiles(self, voxels, space, top_k: int | None = None):
        """VoxelProfiles of ``voxels``: read from the store's profiles step when it has them, else computed."""
        from napari_mine import describe

        voxels = np.asarray(voxels, dtype=int)
        saved = self._saved_profiles(space)
        if saved is not None:
            rows = np.searchsorted(saved.voxels, voxels)
            if np.all(rows < len(saved.voxels)) and np.all(saved.voxels[np.minimum(rows, len(saved.voxels) - 1)] == voxels):
                return describe.VoxelProfiles(saved.concepts, saved.scores[rows], saved.baseline[rows],
                                              saved.top_images[:, rows], saved.region_mass[rows], voxels)
        weights, _ = self.weights()
        top = describe.top_images(self.predicted(voxels), top_k or describe.DEFAULT_TOP_K)
        rows, local = np.unique(top, return_inverse=True)
        return describe.voxel_profiles(self.tokens(rows), weights[:, voxels], local.reshape(top.shape), space,
                                       voxels=voxels)

    def _saved_profiles(self, space):
        from napari_mine.describe import load_profiles

        if not self.store.has("profiles"):
            return None
        settings = self.store.manifest["steps"]["profiles"]["settings"]
        if settings.get("vocabulary_digest") != space.vocabulary.digest:
            return None
        with self._lock:
            if "profiles" not in self._cache:
                self._cache["profiles"] = load_profiles(self.store)
            return self._cache["profiles"]

    # ---- per-image and per-voxel queries --------------------------------------------------------
    def image_attribution(self, voxel: int, row: int, space=None) -> ImageAttribution:
        """The exact patch map of ``voxel`` on image ``row``, and (with a concept space) its description."""
        from napari_mine.attribution import patch_attribution, spatial_fraction, to_patch_grid
        from napari_mine.describe import describe_image

        weights, bias = self.weights()
        n_images = self._tokens_array().shape[0]
        if not 0 <= row < n_images:
            raise MineInputError(f"image {row} is not in {self.root.name}; choose 0 to {n_images - 1}.")
        tokens = self.tokens([row])[0]
        rest = self.rest()[row]
        w, b = weights[:, voxel], float(bias[voxel])
        scores = patch_attribution(tokens, w)
        predicted = float(scores.sum() + rest @ w + b)
        fraction = float(spatial_fraction(tokens, rest, w, b))
        result = ImageAttribution(voxel, row, to_patch_grid(scores), predicted, fraction)
        if space is not None:
            description = describe_image(tokens, w, space)
            result.description = description.text
            result.concepts = [(c, float(v)) for c, v in zip(description.concepts, description.scores)]
        return result

    def report(self, voxel: int, row: int | None, k: int, space=None) -> VoxelReport:
        """The whole inspector panel for a voxel: info, top images, profile and the map on image ``row``."""
        info = self.info(voxel)
        if not (self.has_features and self.has_encoder):
            return VoxelReport(info, np.zeros(0, int), np.zeros(0), [], None)
        rows, values, thumbnails = self.top_images(voxel, k)
        image = None if row is None else self.image_attribution(voxel, row, space)
        profile = [] if space is None else self.voxel_profile(voxel, space)
        name = "" if space is None else space.vocabulary.name
        return VoxelReport(info, rows, values, thumbnails, image, profile, name)

    # ---- ROIs -------------------------------------------------------------------------------------
    def roi_labels(self) -> dict[str, dict[int, str]]:
        """Each ROI volume's labels that have voxels inside the mask."""
        found = {}
        for name, (volume, labels) in self.rois.items():
            present = set(np.unique(volume[self.mask]).tolist())
            found[name] = {k: v for k, v in sorted(labels.items()) if k in present}
        return {name: labels for name, labels in found.items() if labels}

    def roi_report(self, roi: str, label: int, space, k_range=(2, 6), seed: int = 0) -> RoiReport:
        """Mean profile of one ROI label, and its voxels clustered by profile into sub-populations."""
        from napari_mine.describe import cluster_voxels, labels_volume, top_concepts

        if roi not in self.rois:
            raise MineInputError(f"{self.root.name} has no ROI volume {roi!r}; choose one of {sorted(self.rois)}.")
        volume, names = self.rois[roi]
        voxels = np.flatnonzero(volume[self.mask] == label)
        name = names.get(label, f"{roi}-{label}")
        if voxels.size < 3:
            raise MineInputError(f"{name} has {voxels.size} voxels inside the mask; choose a larger ROI.")
        profiles = self.profiles(voxels, space)
        concepts = profiles.concepts
        clustering = cluster_voxels(profiles.scores, k_range=k_range, seed=seed)
        clusters = labels_volume(clustering.labels, self.mask, voxels)
        cluster_profiles, sizes = [], []
        for cluster in range(1, clustering.k + 1):
            members = clustering.labels == cluster
            sizes.append(int(members.sum()))
            cluster_profiles.append(top_concepts(profiles.scores[members].mean(axis=0), concepts, 3))
        return RoiReport(roi, name, int(voxels.size), top_concepts(profiles.scores.mean(axis=0), concepts, 10),
                         top_concepts(profiles.baseline.mean(axis=0), concepts, 10), clusters, cluster_profiles,
                         sizes, clustering.silhouettes, space.vocabulary.name)


def import_torch() -> None:
    """Import torch and open_clip in a way that cannot crash napari.

    napari's OpenGL canvas on Mesa (software rendering under Xvfb or remote desktops, some Linux GPU
    drivers) loads Mesa's LLVM into the process; open_clip's torchvision then imports triton, which bundles
    another LLVM, and the process segfaults. triton only serves torch.compile, which napari-mine does not
    use, so where Mesa's LLVM is loaded and triton is not, triton is marked unavailable first. Called before
    the canvas exists, it loads triton normally.
    """
    if "triton" not in sys.modules and _mesa_llvm_loaded():
        sys.modules["triton"] = None
    import open_clip  # noqa: F401
    import torch  # noqa: F401


def _mesa_llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no /proc, and no Mesa LLVM clash known
        return False


_backbones: dict[tuple, object] = {}
_backbones_lock = threading.Lock()


def shared_backbone(name: str | None, pretrained: str | None, checkpoint: str | None):
    """One loaded backbone per (name, pretrained, checkpoint) for the whole viewer session."""
    from napari_mine.models.backbone import load_backbone

    if name is None:
        raise MineInputError("the results manifest names no model; recompute the features with `napari-mine features`.")
    key = (name, None if checkpoint else pretrained, checkpoint)
    import_torch()
    with _backbones_lock:
        if key not in _backbones:
            _backbones[key] = load_backbone(name, pretrained=key[1], checkpoint=checkpoint)
        return _backbones[key]


_views: dict[str, tuple[tuple, StoreView]] = {}
_views_lock = threading.Lock()


def open_view(root: str | os.PathLike) -> StoreView:
    """The StoreView of ``root``, reopened whenever the store's manifest changed (a step was added)."""
    root = str(Path(root).resolve())
    stat = os.stat(Path(root) / "manifest.json")
    stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    with _views_lock:
        cached = _views.get(root)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    view = StoreView(root)
    with _views_lock:
        _views[root] = (stamp, view)
    return view


_datasets: dict[str, object] = {}


def remember_dataset(root: str | os.PathLike, dataset) -> None:
    """Keep a loaded dataset for its store, so a fit right after opening it does not read the betas again."""
    with _views_lock:
        _datasets[str(Path(root).resolve())] = dataset


def dataset_for(root: str | os.PathLike):
    """The dataset of a store: the one opened in this session, else reloaded from the manifest's record."""
    from napari_mine.data import dataset_from_source
    from napari_mine.store import ResultsStore

    key = str(Path(root).resolve())
    with _views_lock:
        if key in _datasets:
            return _datasets[key]
    dataset = dataset_from_source(ResultsStore.open(root).manifest["dataset"])
    remember_dataset(root, dataset)
    return dataset
