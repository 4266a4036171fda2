"""Diffusers pipelines as a generator: validation on real images with real image models.

Text to image runs any ``AutoPipelineForText2Image`` model (Stable Diffusion 1.x/2.x, SDXL, few-step models
such as SD-Turbo and SDXL-Turbo). Edits inpaint the masked region: with a neutral prompt to remove what is
there, with the concept's prompt to insert it; an InstructPix2Pix model can make the edits instead
(``edit_method="instruct"``). Either way the result is composited with the original by the (feathered)
mask, so pixels where the mask is 0 are the input's exactly. Images of another size than the model's are
resized in and the result resized back before compositing.

Models load from a local folder (written by ``save_pretrained``) or a Hugging Face id already in the local
cache; nothing is downloaded unless ``download=True``. CUDA runs in float16, the CPU in float32. Each image
has its own seeded ``torch.Generator`` (on the CPU, so a seed gives the same noise on any device), so the
result does not depend on the batch size; a CUDA out-of-memory error retries the batch at half the size.
Cancellation raises :class:`~napari_mine.generate.base.GenerationCancelled` from the pipeline's step
callback, which ends the denoising loop at once (no final decode). Its subjects are pixels: every
:class:`~napari_mine.generate.base.Edit` it returns has no scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mine.errors import MineInputError, require_extra
from napari_mine.generate.base import (Edit, Generator, Progress, StopFlag, as_edits, checked_descriptions,
                                       checked_images, checked_masks, composite, image_seeds, images_of, per_image,
                                       resize_images, resize_masks, stop_if_asked)

REMOVAL_PROMPT = "background, empty scene"
REMOVE_INSTRUCTION = "remove the object"
INSERT_INSTRUCTION = "add {}"
EDIT_METHODS = ("inpaint", "instruct")
TASKS = ("text2image", "inpaint", "instruct")
SIZE_MULTIPLE = 8


class DiffusionGenerator(Generator):
    """Generate and edit images with diffusers pipelines (build one with :meth:`load`).

    Parameters
    ----------
    text2image : diffusers pipeline
        Text-to-image pipeline.
    editor : diffusers pipeline, optional
        Inpainting or InstructPix2Pix pipeline; by default an inpainting pipeline sharing ``text2image``'s
        weights (``AutoPipelineForInpainting.from_pipe``).
    steps : int
        Denoising steps (1–4 for Turbo models, 20–50 for the others).
    guidance_scale : float
        Classifier-free guidance (0 for Turbo models).
    image_guidance_scale : float
        InstructPix2Pix's pull toward the input image.
    image_size : int or (H, W), optional
        Size the model works at (multiples of 8); by default the UNet's native size.
    batch_size : int
        Images per pipeline call (halved on CUDA out-of-memory errors, down to 1).
    removal_prompt : str
        Inpainting prompt of :meth:`remove`.
    negative_prompt : str, optional
        Negative prompt of every call (ignored by models without guidance).
    """

    def __init__(self, text2image, editor=None, *, steps: int = 25, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, image_size=None, batch_size: int = 4,
                 removal_prompt: str = REMOVAL_PROMPT, negative_prompt: str | None = None):
        require_extra("diffusion")
        from diffusers import AutoPipelineForInpainting, StableDiffusionInstructPix2PixPipeline

        if steps < 1 or batch_size < 1:
            raise MineInputError(f"steps ({steps}) and batch_size ({batch_size}) must be at least 1.")
        self.text2image = text2image
        self.editor = AutoPipelineForInpainting.from_pipe(text2image) if editor is None else editor
        self.instruct = isinstance(self.editor, StableDiffusionInstructPix2PixPipeline)
        for pipe in (self.text2image, self.editor):
            pipe.set_progress_bar_config(disable=True)
        self.image_size = _model_image_size(text2image) if image_size is None else _checked_size(image_size)
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.guidance_scale, self.image_guidance_scale = float(guidance_scale), float(image_guidance_scale)
        self.removal_prompt, self.negative_prompt = removal_prompt, negative_prompt

    @classmethod
    def load(cls, model, *, edit_model=None, edit_method: str = "inpaint", device: str | None = None, dtype=None,
             download: bool = False, **settings) -> "DiffusionGenerator":
        """Load the pipelines from local folders or the local Hugging Face cache.

        Parameters
        ----------
        model : str or path
            Text-to-image model: a folder written by ``save_pretrained`` or a model id (e.g.
            ``"stabilityai/sd-turbo"``).
        edit_model : str or path, optional
            Inpainting model (default: ``model`` itself) or, with ``edit_method="instruct"``, an
            InstructPix2Pix model (required then, e.g. ``"timbrooks/instruct-pix2pix"``).
        edit_method : {"inpaint", "instruct"}
        device : str, optional
            Default ``"cuda"`` when available, else ``"cpu"``.
        dtype : torch dtype, optional
            Default float16 on CUDA, float32 otherwise.
        download : bool
            Allow downloading a model id that is not in the local cache.
        **settings
            Keyword arguments of :class:`DiffusionGenerator` (steps, guidance_scale, image_size, ...).
        """
        if edit_method not in EDIT_METHODS:
            raise MineInputError(f"Unknown edit_method {edit_method!r}; use one of {', '.join(EDIT_METHODS)}.")
        if edit_method == "instruct" and edit_model is None:
            raise MineInputError("edit_method='instruct' needs an InstructPix2Pix model; pass edit_model= a "
                                 "local folder or a model id such as 'timbrooks/instruct-pix2pix'.")
        options = {"device": device, "dtype": dtype, "download": download}
        text2image = load_pipeline(model, "text2image", **options)
        editor = None if edit_model is None else load_pipeline(
            edit_model, "instruct" if edit_method == "instruct" else "inpaint", **options)
        return cls(text2image, editor, **settings)

    # ------------------------------------------------------------------------------------------- interface

    def generate(self, descriptions, seed: int = 0, *, on_progress: Progress = None,
                 should_stop: StopFlag = None) -> list[Edit]:
        """Images from text (see :meth:`Generator.generate`)."""
        prompts = checked_descriptions(descriptions)
        height, width = self.image_size

        def arguments(start, stop):
            return {"prompt": prompts[start:stop], "height": height, "width": width,
                    "guidance_scale": self.guidance_scale, **self._negative(stop - start)}

        return as_edits(self._run(self.text2image, len(prompts), arguments, seed, on_progress, should_stop))

    def remove(self, edits, masks, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """Inpaint each masked region with the neutral removal prompt (or instruct the model to remove)."""
        prompt = REMOVE_INSTRUCTION if self.instruct else self.removal_prompt
        return as_edits(self._edit(images_of(edits), masks, prompt, seed, on_progress, should_stop))

    def insert(self, edits, masks, concepts, seed: int = 0, *, on_progress: Progress = None,
               should_stop: StopFlag = None) -> list[Edit]:
        """Inpaint each masked region with its concept as the prompt (or instruct the model to add it)."""
        images = images_of(edits)
        concepts = per_image(concepts, len(images), "concept")
        prompts = [INSERT_INSTRUCTION.format(c) for c in concepts] if self.instruct else concepts
        return as_edits(self._edit(images, masks, prompts, seed, on_progress, should_stop))

    # ------------------------------------------------------------------------------------------- running

    def _edit(self, images, masks, prompts, seed, on_progress, should_stop) -> np.ndarray:
        """Edit at the model's size, resize back, and composite with the originals by the masks."""
        images = checked_images(images)
        masks = checked_masks(masks, len(images), images.shape[1:3])
        prompts = per_image(prompts, len(images), "prompt")
        pixels = resize_images(images, self.image_size).astype(np.float32) / 255.0
        regions = (resize_masks(masks, self.image_size) > 0).astype(np.float32)[..., None]
        height, width = self.image_size

        def arguments(start, stop):
            shared = {"prompt": prompts[start:stop], "image": pixels[start:stop],
                      "guidance_scale": self.guidance_scale, **self._negative(stop - start)}
            if self.instruct:
                return {**shared, "image_guidance_scale": self.image_guidance_scale}
            return {**shared, "mask_image": regions[start:stop], "height": height, "width": width, "strength": 1.0}

        edited = self._run(self.editor, len(images), arguments, seed, on_progress, should_stop)
        return composite(images, resize_images(edited, images.shape[1:3]), masks)

    def _negative(self, n: int) -> dict:
        return {} if self.negative_prompt is None else {"negative_prompt": [self.negative_prompt] * n}

    def _run(self, pipe, n_images: int, arguments, seed: int, on_progress, should_stop) -> np.ndarray:
        """Call ``pipe`` batch by batch with per-image generators; halve the batch on out-of-memory errors.

        ``arguments(start, stop)`` gives the call's keyword arguments for images ``start:stop``.
        """
        import torch

        seeds = image_seeds(seed, n_images)
        images = np.empty((n_images,) + self.image_size + (3,), np.uint8)
        start, batch = 0, self.batch_size
        while start < n_images:
            stop_if_asked(should_stop)
            stop = min(start + batch, n_images)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]]
            callback = _step_callback(start, stop - start, n_images, on_progress, should_stop)
            result = _call_unless_out_of_memory(pipe, arguments(start, stop), generators, self.steps, callback)
            if result is None:
                if batch == 1:
                    raise MineInputError(
                        f"Out of GPU memory even with one image at a time at {self.image_size[0]}x"
                        f"{self.image_size[1]} px; use a smaller image_size, free GPU memory or load in float16.")
                batch //= 2
                torch.cuda.empty_cache()
                continue
            images[start:stop] = _to_uint8(result)
            start = stop
        return images


def _call_unless_out_of_memory(pipe, arguments: dict, generators, steps: int, callback):
    """The pipeline's images (float (B, H, W, 3) in [0, 1]), or None when CUDA ran out of memory.

    Returning instead of handling the error inside ``except`` lets the traceback (and the tensors it holds)
    go before the caller frees the CUDA cache.
    """
    import torch

    try:
        return pipe(**arguments, generator=generators, num_inference_steps=steps, output_type="np",
                    callback_on_step_end=callback).images
    except torch.cuda.OutOfMemoryError:
        return None


def _step_callback(done_before: int, batch_len: int, n_images: int, on_progress, should_stop):
    """``callback_on_step_end``: stop when asked, report progress in image-steps."""

    def on_step_end(pipe, step, timestep, tensors):
        stop_if_asked(should_stop)
        if on_progress is not None:
            steps = pipe.num_timesteps
            on_progress(done_before * steps + batch_len * (step + 1), n_images * steps)
        return {}

    return on_step_end


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def _model_image_size(pipe) -> tuple[int, int]:
    """The UNet's native image size: latent sample size × the VAE's scale factor."""
    side = pipe.unet.config.sample_size
    height, width = (side, side) if np.isscalar(side) else side
    return height * pipe.vae_scale_factor, width * pipe.vae_scale_factor


def _checked_size(size) -> tuple[int, int]:
    height, width = (size, size) if np.isscalar(size) else tuple(size)
    if height < SIZE_MULTIPLE or width < SIZE_MULTIPLE or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise MineInputError(f"image_size {size} is not a multiple of {SIZE_MULTIPLE} pixels; "
                             "use e.g. 512 or (512, 768).")
    return int(height), int(width)


# ----------------------------------------------------------------------------------------------- loading


def default_device() -> str:
    """``"cuda"`` when a GPU is there, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model, task: str, *, device: str | None = None, dtype=None, download: bool = False):
    """Load a diffusers pipeline for ``task`` from a local folder or the local Hugging Face cache.

    Parameters
    ----------
    model : str or path
        Folder written by ``save_pretrained``, or a model id.
    task : {"text2image", "inpaint", "instruct"}
    device : str, optional
        Default :func:`default_device`.
    dtype : torch dtype, optional
        Default float16 on CUDA, float32 otherwise.
    download : bool
        Allow the hub client to download a model id missing from the cache.

    Returns
    -------
    diffusers pipeline on ``device``
    """
    require_extra("diffusion")
    import torch
    from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image, StableDiffusionInstructPix2PixPipeline

    loaders = {"text2image": AutoPipelineForText2Image, "inpaint": AutoPipelineForInpainting,
               "instruct": StableDiffusionInstructPix2PixPipeline}
    if task not in loaders:
        raise MineInputError(f"Unknown pipeline task {task!r}; use one of {', '.join(TASKS)}.")
    device = device or default_device()
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    folder = Path(model).expanduser()
    if folder.is_dir() and not (folder / "model_index.json").is_file():
        raise MineInputError(f"{folder} holds no diffusers pipeline (no model_index.json); pass a folder written "
                             "by save_pretrained or a model id.")
    source = str(folder) if folder.is_dir() else str(model)
    try:
        pipe = loaders[task].from_pretrained(source, dtype=dtype, local_files_only=folder.is_dir() or not download)
    except (OSError, ValueError) as error:  # what the hub client raises for missing or unreachable files
        if folder.is_dir():
            raise MineInputError(f"Could not load the {task} pipeline in {folder} ({_first_line(error)}); "
                                 "check that the folder is a complete save_pretrained output.") from None
        how = "and could not be downloaded" if download else "and downloading is off (download=False)"
        raise MineInputError(f"Model {model!r} is not in the local Hugging Face cache {how}; download it where "
                             f"there is network (huggingface-cli download {model} --local-dir DIR) and pass the "
                             "folder DIR as the model.") from None
    return pipe.to(device)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ----------------------------------------------------------------------------------------------- random weights


TINY = {
    "unet": {"block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8,
             "attention_head_dim": 8, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
    "vae": {"block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16,
            "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 32, "vocab_size": 1000},
}
SD15 = {
    "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
             "sample_size": 64, "attention_head_dim": 8,
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
    "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
            "sample_size": 512, "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4},
    "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "projection_dim": 768, "vocab_size": 49408},
}
SHAPES = {"tiny": TINY, "sd15": SD15}


def random_pipeline(shape: str = "tiny", task: str = "text2image", seed: int = 0):
    """A Stable Diffusion pipeline with random weights, built from configs without any download.

    For tests, benchmarks and the offline demo: it runs every code path of a real model (save it with
    ``save_pretrained`` and load the folder with :meth:`DiffusionGenerator.load`), but makes noise.

    Parameters
    ----------
    shape : {"tiny", "sd15"}
        ``"tiny"``: 16 px images, a few hundred thousand weights; ``"sd15"``: Stable Diffusion 1.5's
        UNet, VAE and text encoder shapes (512 px).
    task : {"text2image", "instruct"}
        ``"instruct"`` gives an InstructPix2Pix pipeline (a UNet with 8 input channels).
    seed : int
        Seed of the random weights.

    Returns
    -------
    StableDiffusionPipeline or StableDiffusionInstructPix2PixPipeline (float32, CPU)
    """
    require_extra("diffusion")
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline,
                           StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    if shape not in SHAPES or task not in ("text2image", "instruct"):
        raise MineInputError(f"Unknown random pipeline {shape!r}/{task!r}; use shape 'tiny' or 'sd15' and task "
                             "'text2image' or 'instruct'.")
    config = SHAPES[shape]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=8 if task == "instruct" else 4, out_channels=4, **config["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **config["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1, **config["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": _character_tokenizer(),
                  "scheduler": scheduler, "safety_checker": None, "feature_extractor": None,
                  "requires_safety_checker": False}
    pipeline_class = StableDiffusionInstructPix2PixPipeline if task == "instruct" else StableDiffusionPipeline
    return pipeline_class(**components)


def _character_tokenizer():
    """A CLIP tokenizer over single printable characters (no merges): real tokenizer code, no vocab download."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for code in range(33, 127):
        vocab[chr(code)] = len(vocab)
        vocab[chr(code) + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
