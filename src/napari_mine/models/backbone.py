"""Load a CLIP backbone: the shipped ``mine-small``, any open_clip model + pretrained tag, or a local file.

Every model comes from open_clip's own factory, so the decomposition code sees one kind of object whatever
the source. Weights that would need a download are looked up in the user's cache first and the hub is only
contacted after a quick reachability probe, so a machine without network fails in seconds with one
sentence instead of a hub client's minute of retries and its stack trace.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import MineInputError

if TYPE_CHECKING:
    import torch

ASSETS_DIR = Path(__file__).parent / "assets"
SHIPPED_NAME = "mine-small"
SHIPPED_TAG = "synthetic-world"
SHIPPED_CONFIG = ASSETS_DIR / f"{SHIPPED_NAME}.json"
SHIPPED_WEIGHTS = ASSETS_DIR / f"{SHIPPED_NAME}.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
PROBE_TIMEOUT_S = 3.0
_EXAMPLE_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


@dataclass
class Backbone:
    """A CLIP model in eval mode with the preprocessing and tokenizer it was trained with.

    ``checksum`` ("sha256:<hex>" of the weights file) identifies the weights in a results manifest.
    """

    model: Any
    name: str
    pretrained: str | None
    checksum: str
    embed_dim: int
    image_size: int
    preprocess_cfg: dict
    tokenizer: Any
    device: str

    @property
    def record(self) -> dict:
        """What identifies this backbone in a manifest: name, pretrained tag and weights checksum."""
        return {
            "id": f"{self.name}:{self.pretrained or ''}:{self.checksum}",
            "name": self.name,
            "pretrained": self.pretrained,
            "checksum": self.checksum,
            "embed_dim": int(self.embed_dim),
            "image_size": int(self.image_size),
        }

    def preprocess(self, images) -> "torch.Tensor":
        """Resize and normalise uint8 RGB images as the model expects.

        Parameters
        ----------
        images : uint8 array (B, H, W, 3) or list of uint8 arrays (H, W, 3)
            Images of any size; a list may mix sizes.

        Returns
        -------
        torch.Tensor
            float32 (B, 3, S, S) on the model's device, S = ``image_size``.
        """
        return preprocess_images(images, self.image_size, self.preprocess_cfg, self.device)

    def encode_image(self, images, batch_size: int = 256) -> "torch.Tensor":
        """L2-normalised image embeddings (B, D) of uint8 images, computed in batches without gradients."""
        import torch

        chunks = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
        with torch.no_grad():
            embeddings = [self.model.encode_image(self.preprocess(chunk), normalize=True) for chunk in chunks]
        return torch.cat(embeddings) if embeddings else torch.zeros((0, self.embed_dim), device=self.device)

    def encode_text(self, texts: Sequence[str]) -> "torch.Tensor":
        """L2-normalised text embeddings (N, D) of a list of strings, tokenised with open_clip's tokenizer."""
        import torch

        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise MineInputError("encode_text takes a list of strings; wrap a single text as [text].")
        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=True)


def load_backbone(name: str = SHIPPED_NAME, pretrained: str | None = None, checkpoint: str | os.PathLike | None = None,
                  device: str = "cpu") -> Backbone:
    """Create an open_clip model with its weights, in eval mode.

    Parameters
    ----------
    name : str
        ``"mine-small"`` (the CLIP trained on the synthetic world, shipped with the package) or any open_clip
        architecture name (``open_clip.list_models()``).
    pretrained : str, optional
        An open_clip pretrained tag (e.g. ``"laion2b_s34b_b79k"``), downloaded once into the user's cache.
        Not needed for ``mine-small`` or with ``checkpoint``.
    checkpoint : path, optional
        A local weights file (.safetensors, .pt, .pth, .bin) for the architecture ``name``.
    device : str
        Torch device for the model and the preprocessed images; "auto" is CUDA when available, else CPU.

    Returns
    -------
    Backbone
    """
    import_torch()
    device = resolve_device(device)
    register_shipped_config()
    _check_model_name(name)
    if checkpoint is not None and pretrained is not None:
        raise MineInputError("Give either a pretrained tag or a checkpoint file, not both.")
    weights, pretrained, tag_cfg = _resolve_weights(name, pretrained, checkpoint)
    model = _create_with_weights(name, weights, tag_cfg, device)
    return _as_backbone(model, name, pretrained, weights, device)


def resolve_device(device: str = "auto") -> str:
    """The one place the torch device is chosen: "auto" is "cuda" when a GPU is visible, else "cpu"."""
    if device != "auto":
        return device
    import_torch()
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def import_torch() -> None:
    """Import torch and open_clip in a way that cannot crash napari.

    napari's OpenGL canvas on Mesa (software rendering under Xvfb or remote desktops, some Linux GPU
    drivers) loads Mesa's LLVM into the process; open_clip's torchvision then imports triton, which bundles
    another LLVM, and the process segfaults. triton only serves torch.compile, which napari-mine does not
    use, so where Mesa's LLVM is loaded and triton is not, triton is marked unavailable first. Called before
    the canvas exists, it loads triton normally.
    """
    if "open_clip" in sys.modules:
        return
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


def _check_model_name(name: str) -> None:
    """Refuse names open_clip's factory does not know (schemas included: they bypass the offline checks)."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        raise MineInputError(f"Model names with a schema ({name!r}) are not supported; pass the architecture name "
                             "and the repository's weights file with --checkpoint PATH.")
    if name not in open_clip.list_models():
        raise MineInputError(f"Unknown model {name!r}; use {SHIPPED_NAME} or an open_clip architecture such as "
                             f"{', '.join(_EXAMPLE_MODELS)} (open_clip.list_models() lists all).")


def _resolve_weights(name: str, pretrained: str | None, checkpoint) -> tuple[Path, str | None, dict]:
    """The weights file to load, the tag recorded for it, and the tag's open_clip record ({} for local files)."""
    if checkpoint is not None:
        return _checked_checkpoint(checkpoint), None, {}
    if name == SHIPPED_NAME:
        if pretrained not in (None, SHIPPED_TAG):
            raise MineInputError(f"{SHIPPED_NAME} has only the shipped weights ({SHIPPED_TAG!r}); "
                                 "leave pretrained empty or pass your own weights with --checkpoint PATH.")
        if not SHIPPED_WEIGHTS.is_file():
            raise MineInputError(f"The shipped {SHIPPED_NAME} weights are missing from the package; reinstall "
                                 "napari-mine or pass a weights file with --checkpoint PATH.")
        return SHIPPED_WEIGHTS, SHIPPED_TAG, {}
    tag_cfg = _pretrained_cfg(name, pretrained)
    return Path(_pretrained_weights_file(name, pretrained, tag_cfg)), pretrained, tag_cfg


def register_shipped_config() -> None:
    """Make ``mine-small`` known to open_clip's factory (once per process)."""
    import open_clip

    if SHIPPED_NAME not in open_clip.list_models():
        open_clip.add_model_config(SHIPPED_CONFIG)


def preprocess_images(images, image_size: int, preprocess_cfg: dict, device: str = "cpu") -> "torch.Tensor":
    """Vectorised open_clip preprocessing: resize (``resize_mode``), crop or pad to ``image_size``, normalise.

    Images of the same size are processed as one batch; the output keeps the input order.
    """
    import torch

    arrays = _as_image_list(images)
    out = torch.empty((len(arrays), 3, image_size, image_size), dtype=torch.float32, device=device)
    mean = torch.tensor(preprocess_cfg["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for shape in {array.shape for array in arrays}:
        rows = [i for i, array in enumerate(arrays) if array.shape == shape]
        batch = torch.from_numpy(np.stack([arrays[i] for i in rows])).to(device)
        batch = batch.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        resized = _resize_to_square(batch, image_size, preprocess_cfg["resize_mode"], preprocess_cfg["interpolation"])
        out[rows] = (resized - mean) / std
    return out


def _as_image_list(images) -> list[np.ndarray]:
    """Check that ``images`` are uint8 RGB arrays and return them as a list of (H, W, 3) arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise MineInputError(f"Expected a uint8 image batch of shape (B, H, W, 3), got shape {images.shape}; "
                                 "stack single images with images[None].")
        images = list(images)
    arrays = [np.asarray(image) for image in images]
    for array in arrays:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise MineInputError(f"Expected uint8 RGB images (H, W, 3), got {array.dtype} of shape {array.shape}; "
                                 "convert images to 8-bit RGB first.")
    return arrays


def _resize_to_square(batch: "torch.Tensor", size: int, resize_mode: str, interpolation: str) -> "torch.Tensor":
    """Resize (B, 3, H, W) in [0, 1] to (B, 3, size, size) like open_clip's transform for ``resize_mode``."""
    import torch.nn.functional as F

    height, width = batch.shape[-2:]
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    if resize_mode == "squash":
        target = (size, size)
    elif resize_mode == "shortest":  # torchvision's Resize(int): short side = size, long side truncated
        short, long = sorted((height, width))
        long_side = int(size * long / short)
        target = (size, long_side) if height <= width else (long_side, size)
    else:  # "longest", open_clip's ResizeKeepRatio: both sides rounded
        scale = size / max(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
    if target != (height, width):
        batch = F.interpolate(batch, size=target, mode=mode, antialias=True, align_corners=False).clamp(0.0, 1.0)
    return _center_crop_or_pad(batch, size)


def _center_crop_or_pad(batch: "torch.Tensor", size: int) -> "torch.Tensor":
    """Centre crop (or zero-pad, for ``resize_mode="longest"``) to ``size`` × ``size``."""
    import torch.nn.functional as F

    height, width = batch.shape[-2:]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        batch = F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = batch.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return batch[..., top:top + size, left:left + size]


def _checked_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint path, if it names an existing weights file of a supported kind."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MineInputError(f"Checkpoint file {str(path)!r} does not exist; check the path given with --checkpoint.")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise MineInputError(f"Checkpoint {path.name!r} is not a weights file; "
                             f"use one of {', '.join(CHECKPOINT_SUFFIXES)}.")
    return path


def _pretrained_cfg(name: str, pretrained: str | None) -> dict:
    """open_clip's record (hub location, preprocessing) for a model's pretrained tag."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if not cfg:
        known = f"one of its tags ({', '.join(tags)})" if tags else "a local weights file"
        raise MineInputError(f"Model {name!r} needs weights: pass {known} as pretrained, "
                             "or a local file with --checkpoint PATH.")
    return cfg


def _pretrained_weights_file(name: str, tag: str, cfg: dict) -> str:
    """Local path of a tag's weights: from the cache, else downloaded once the hub proves reachable."""
    import open_clip

    cached = _cached_weights(cfg)
    if cached:
        return cached
    source = _download_source(cfg)
    advice = f"download the weights elsewhere and pass the file with --checkpoint PATH (model {name}, tag {tag})"
    if not _reachable(source):
        raise MineInputError(f"Weights for {name} ({tag}) are not in the local cache and {source} cannot be "
                             f"reached; {advice}.")
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as exc:  # the hub clients raise many types; the user needs one sentence
        raise MineInputError(f"Downloading weights for {name} ({tag}) failed ({type(exc).__name__}); "
                             f"{advice}.") from None


def _cached_weights(cfg: dict) -> str | None:
    """Path of the tag's weights if a previous download left them in the Hugging Face or open_clip cache."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        alternatives = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
            alternatives.append(filename[:-4] + ".safetensors")
        for candidate in [*alternatives, filename]:
            found = try_to_load_from_cache(repo_id, candidate)
            if isinstance(found, str):
                return found
    if cfg.get("url"):
        target = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if target.is_file():
            return str(target)
    return None


def _download_source(cfg: dict) -> str:
    """The URL open_clip would download a tag's weights from (the hub when it has the file)."""
    from huggingface_hub import constants

    return constants.ENDPOINT if cfg.get("hf_hub") else cfg.get("url", "")


def _reachable(url: str) -> bool:
    """Whether a TCP connection to the URL's host (or the configured proxy) opens within a few seconds."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE:
        return False
    parsed = urllib.parse.urlparse(urllib.request.getproxies().get(urllib.parse.urlparse(url).scheme) or url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, TypeError):
        return False
    return True


def _create_with_weights(name: str, weights: Path, tag_cfg: dict, device: str):
    """open_clip's factory with a local weights file and the tag's preprocessing and activation; a file that
    does not fit the architecture is refused."""
    import open_clip

    try:
        model = open_clip.create_model(name, pretrained=str(weights), device=device,
                                       force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                                       force_preprocess_cfg=tag_cfg)
    except Exception as exc:  # torch, safetensors and pickle raise many types for a wrong or damaged file
        raise MineInputError(f"Weights file {weights.name!r} does not match the {name} architecture or cannot be "
                             f"read ({type(exc).__name__}); pass weights saved from a {name} model.") from None
    return model.eval()


def _as_backbone(model, name: str, pretrained: str | None, weights: Path, device: str) -> Backbone:
    """Wrap a loaded model with its tokenizer, preprocessing record and weights checksum."""
    import open_clip

    visual_size = model.visual.image_size
    image_size = visual_size[0] if isinstance(visual_size, (tuple, list)) else int(visual_size)
    return Backbone(model=model, name=name, pretrained=pretrained, checksum=file_checksum(weights),
                    embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
                    image_size=int(image_size), preprocess_cfg=dict(model.visual.preprocess_cfg),
                    tokenizer=open_clip.get_tokenizer(name), device=str(device))


def file_checksum(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
