"""Load a served model's base pipeline: hub id, local diffusers folder or single file.

Rules that hold for every reference: weights load from ``.safetensors`` only
(``use_safetensors=True``; pickle files are refused before anything is read), remote code is
never run, and the safety checker is not part of the pipeline (``engine.safety`` runs it as
post-processing for every family).

Single-file checkpoints go through diffusers' ``from_single_file`` with ``config=`` pointing
at a local folder of diffusers configs, so nothing is fetched from the hub:

- an exported checkpoint (``checkpoint_export``) carries its own config folder beside it,
  tokenizer included: tiny models load offline through the very same call;
- any other checkpoint uses the configs shipped in ``sdserve/engine/configs/<family>``.
  Tokenizer vocabularies cannot be shipped, so they come from the Hugging Face cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdserve.errors import ModelLoadError
from sdserve.models.catalog import ModelSpec
from sdserve.models.references import (
    SAFETENSORS_SUFFIX,
    SINGLE_FILE_CONFIG_SUFFIX,
    ModelInfo,
    check_weights_format,
    inspect_reference,
    is_hub_id,
    read_safetensors_header,
)

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline

    from sdserve.models.settings import EngineSettings

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "configs"

#: Where a tokenizer of a real single-file checkpoint may be found in the Hugging Face
#: cache: (repo id, subfolder), tried in order. The first is what we suggest downloading.
TOKENIZER_SOURCES: dict[str, dict[str, Sequence[tuple[str, str]]]] = {
    "sd1": {
        "tokenizer": (
            ("openai/clip-vit-large-patch14", ""),
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        ),
    },
    "sd2": {
        "tokenizer": (
            ("stabilityai/stable-diffusion-2-1", "tokenizer"),
            ("stabilityai/stable-diffusion-2", "tokenizer"),
        ),
    },
    "sdxl": {
        "tokenizer": (
            ("openai/clip-vit-large-patch14", ""),
            ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
        ),
        "tokenizer_2": (
            ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
            ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
        ),
    },
    "sdxl-refiner": {
        "tokenizer_2": (
            ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
            ("stabilityai/stable-diffusion-xl-refiner-1.0", "tokenizer_2"),
        ),
    },
    "sd3": {
        "tokenizer": (
            ("openai/clip-vit-large-patch14", ""),
            ("stabilityai/stable-diffusion-3.5-large", "tokenizer"),
            ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer"),
        ),
        "tokenizer_2": (
            ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
            ("stabilityai/stable-diffusion-3.5-large", "tokenizer_2"),
            ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer_2"),
        ),
    },
}
#: Where the T5 tokenizer of a real SD3 single-file checkpoint that carries T5 may be found
#: in the Hugging Face cache: (repo id, subfolder), tried in order.
T5_TOKENIZER_SOURCES: tuple[tuple[str, str], ...] = (
    ("google/t5-v1_1-xxl", ""),
    ("stabilityai/stable-diffusion-3.5-large", "tokenizer_3"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "tokenizer_3"),
)
#: The CLIP encoders of an SD3 single-file checkpoint (diffusers needs both in the file).
SD3_CLIP_KEYS = (
    "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight",
    "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight",
)
#: Turbo checkpoints share their base architecture.
ARCHITECTURE_OF = {"sd-turbo": "sd2", "sdxl-turbo": "sdxl", "sd3-turbo": "sd3"}
#: SD3's third text encoder (T5-XXL) and its tokenizer: optional, see :func:`_without_t5`.
T5_COMPONENTS = ("text_encoder_3", "tokenizer_3")


def pipeline_class(family: str, inpainting: bool) -> type[DiffusionPipeline]:
    """The diffusers pipeline class that serves a family's base task."""
    import diffusers

    if family in ("sd3", "sd3-turbo"):
        name = "StableDiffusion3Pipeline"
    elif family == "sdxl-refiner":
        name = "StableDiffusionXLImg2ImgPipeline"
    elif family in ("sdxl", "sdxl-turbo"):
        name = "StableDiffusionXLInpaintPipeline" if inpainting else "StableDiffusionXLPipeline"
    else:
        name = "StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionPipeline"
    cls: type[DiffusionPipeline] = getattr(diffusers, name)
    return cls


def load_pipeline(
    spec: ModelSpec, *, device: str, dtype: torch.dtype, settings: EngineSettings
) -> DiffusionPipeline:
    """Load the base pipeline of ``spec`` on ``device`` in ``dtype``.

    Raises :class:`ModelLoadError` with a how-to-fix message for pickle files, hub ids that
    are not cached while offline, and tokenizers missing for single-file checkpoints.
    """
    info = ModelInfo(spec.family, spec.inpainting, spec.native_size)
    return _load(spec.reference, info, device=device, dtype=dtype, settings=settings)


def load_refiner(
    reference: str, *, device: str, dtype: torch.dtype, settings: EngineSettings
) -> StableDiffusionXLImg2ImgPipeline:
    """Load an SDXL refiner (``StableDiffusionXLImg2ImgPipeline``) from any reference kind."""
    info = inspect_reference(reference, cache_dir=settings.cache_dir, offline=settings.offline)
    if info.family != "sdxl-refiner":
        raise ModelLoadError(
            f"{reference} is a {info.family} model, not an SDXL refiner "
            "(a refiner has only the OpenCLIP text encoder and scores aesthetics)"
        )
    pipe: Any = _load(reference, info, device=device, dtype=dtype, settings=settings)
    return pipe


def _load(
    reference: str,
    info: ModelInfo,
    *,
    device: str,
    dtype: torch.dtype,
    settings: EngineSettings,
) -> DiffusionPipeline:
    check_weights_format(reference)
    cls = pipeline_class(info.family, info.inpainting)
    path = Path(reference).expanduser()
    extra = _no_safety_checker(info.family)
    if path.is_file():
        extra.update(_single_file_without_t5(info.family, path))
        pipe = _from_single_file(cls, path, info, dtype=dtype, settings=settings, extra=extra)
    elif path.is_dir():
        extra.update(_without_t5(info.family, reference, path / "text_encoder_3", settings))
        pipe = _from_pretrained(cls, str(path), dtype=dtype, extra=extra, local_files_only=True)
    elif is_hub_id(reference):
        extra.update(_without_t5(info.family, reference, None, settings))
        pipe = _from_hub(cls, reference, dtype=dtype, settings=settings, extra=extra)
    else:
        raise ModelLoadError(f"{reference!r} is not a folder, a .safetensors file or a hub id")
    loaded: Any = pipe  # diffusers' type stubs miss the pipeline mixin methods
    loaded.to(device)
    loaded.set_progress_bar_config(disable=True)
    return pipe


def _without_t5(
    family: str, reference: str, folder: Path | None, settings: EngineSettings
) -> dict[str, Any]:
    """SD3's T5 encoder is optional: when a folder has no ``text_encoder_3`` (or a cached
    hub model was downloaded without it) the model is served with its two CLIP encoders
    only, which saves the T5-XXL's memory (about 9.8 GB in float16) at some cost in prompt
    following; prompts are then read up to CLIP's 77 tokens. A hub model not cached at all
    is downloaded whole, T5 included."""
    if family not in ("sd3", "sd3-turbo"):
        return {}
    if folder is not None:
        present = (folder / "config.json").is_file()
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            reference, "text_encoder_3/config.json", cache_dir=settings.cache_dir
        )
        present = isinstance(found, str) or not is_cached(reference, settings)
    if present:
        return {}
    log.info(
        "%s: no T5 text encoder (text_encoder_3); serving it with its two CLIP encoders "
        "only: about 9.8 GB (float16) less memory, prompts read up to 77 tokens",
        reference,
    )
    return dict.fromkeys(T5_COMPONENTS)


#: A key of the T5 encoder in an SD3 single-file checkpoint that carries one.
T5_SINGLE_FILE_KEY = "text_encoders.t5xxl.transformer.shared.weight"


def _single_file_without_t5(family: str, path: Path) -> dict[str, Any]:
    """An SD3 checkpoint without the T5 encoder (most are published so) is served with its
    CLIP encoders only, as a folder without ``text_encoder_3`` is (:func:`_without_t5`)."""
    if family not in ("sd3", "sd3-turbo") or T5_SINGLE_FILE_KEY in read_safetensors_header(path):
        return {}
    log.info("%s: no T5 text encoder in the checkpoint; serving it with its CLIP encoders", path)
    return dict.fromkeys(T5_COMPONENTS)


def _no_safety_checker(family: str) -> dict[str, Any]:
    """SD1/SD2 pipelines carry a safety checker slot; we run safety as post-processing."""
    if family in ("sd1", "sd2", "sd-turbo"):
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _from_pretrained(
    cls: type[DiffusionPipeline],
    source: str,
    *,
    dtype: torch.dtype,
    extra: dict[str, Any],
    local_files_only: bool,
    cache_dir: Path | None = None,
) -> DiffusionPipeline:
    try:
        pipe: DiffusionPipeline = cls.from_pretrained(
            source,
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {source}: {exc}") from exc
    return pipe


def hub_cache_dir(settings: EngineSettings) -> Path:
    """The Hugging Face cache folder in use (settings, else the library's default)."""
    if settings.cache_dir is not None:
        return settings.cache_dir
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_cached(repo_id: str, settings: EngineSettings) -> bool:
    """Whether a hub model's pipeline is in the Hugging Face cache (no network, no torch)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=settings.cache_dir)
    return isinstance(found, str)


def not_cached_message(repo_id: str, settings: EngineSettings) -> str:
    """What to do about a hub model that is not cached and cannot be downloaded now."""
    hub = "offline (HF_HUB_OFFLINE or the offline setting)" if settings.offline else "unreachable"
    return (
        f"model '{repo_id}' is not in the Hugging Face cache ({hub_cache_dir(settings)}) and the "
        f"hub is {hub}; download it on a machine with network: hf download {repo_id} "
        "(then copy the cache here), or pass a local folder / .safetensors file"
    )


def _from_hub(
    cls: type[DiffusionPipeline],
    repo_id: str,
    *,
    dtype: torch.dtype,
    settings: EngineSettings,
    extra: dict[str, Any],
) -> DiffusionPipeline:
    cached = is_cached(repo_id, settings)
    if not cached and settings.offline:
        raise ModelLoadError(not_cached_message(repo_id, settings))
    try:
        pipe: DiffusionPipeline = cls.from_pretrained(
            repo_id,
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=settings.offline,
            cache_dir=settings.cache_dir,
            **extra,
        )
    except Exception as exc:  # the hub client raises many types for "unreachable"
        if not cached:
            raise ModelLoadError(
                f"{not_cached_message(repo_id, settings)} ({type(exc).__name__}: {exc})"
            ) from exc
        raise ModelLoadError(f"cannot load {repo_id} from the cache: {exc}") from exc
    return pipe


def config_folder(path: Path, info: ModelInfo) -> tuple[Path, bool]:
    """The diffusers config folder for a single file, and whether it holds tokenizers.

    An exported checkpoint has its own (with tokenizer files); others use the shipped
    configs of their architecture.
    """
    sidecar = path.with_name(path.stem + SINGLE_FILE_CONFIG_SUFFIX)
    if (sidecar / "model_index.json").is_file():
        return sidecar, True
    architecture = ARCHITECTURE_OF.get(info.family, info.family)
    name = architecture + ("-inpaint" if info.inpainting else "")
    if architecture == "sd3":
        name = sd3_variant(read_safetensors_header(path)) or "unknown SD3 variant"
    shipped = CONFIGS_DIR / name
    if not (shipped / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path}: single-file {info.family} checkpoints"
            f"{' for inpainting' if info.inpainting else ''} are not supported; "
            "use the model's diffusers folder instead"
        )
    return shipped, False


def sd3_variant(header: dict[str, Any]) -> str | None:
    """Which SD3 architecture a single file holds, from its header (the shipped config folder
    of that name): SD3 Medium (24 MMDiT blocks), SD3.5 Large / Large Turbo (38 blocks, q/k
    norms) or SD3.5 Medium (24 blocks, q/k norms, a second attention in the first 13)."""
    prefix = "model.diffusion_model.joint_blocks."
    blocks = {int(key[len(prefix) :].split(".", 1)[0]) for key in header if key.startswith(prefix)}
    if not blocks:
        return None
    layers = max(blocks) + 1
    qk_norm = any(".attn.ln_q." in key for key in header)
    dual = any(".x_block.attn2." in key for key in header)
    if layers == 24 and not qk_norm and not dual:
        return "sd3"
    if layers == 38 and qk_norm and not dual:
        return "sd35-large"
    if layers == 24 and qk_norm and dual:
        return "sd35-medium"
    return None


def _sd3_components(path: Path, settings: EngineSettings) -> dict[str, Any]:
    """What a real SD3 single file needs besides its configs: both CLIP encoders must be in
    it (diffusers has nowhere else to take them from), and its T5, when it has one, needs
    the T5 tokenizer from the Hugging Face cache; without that tokenizer the model is
    served without T5, as it is without the encoder."""
    header = read_safetensors_header(path)
    if not all(key in header for key in SD3_CLIP_KEYS):
        raise ModelLoadError(
            f"{path}: this SD3 checkpoint carries no CLIP text encoders (text_encoders.clip_l "
            "and clip_g); use a checkpoint that includes them (Stability publishes "
            "'..._incl_clips' files) or the model's diffusers folder"
        )
    if T5_SINGLE_FILE_KEY not in header:
        return {}
    tokenizer = _t5_tokenizer(settings)
    if tokenizer is None:
        log.warning(
            "%s: its T5 encoder is left out: no T5 tokenizer in the Hugging Face cache "
            "that loads without sentencepiece (one with tokenizer.json, e.g. hf download "
            "stabilityai/stable-diffusion-3.5-large --include 'tokenizer_3/*')",
            path,
        )
        return dict.fromkeys(T5_COMPONENTS)
    return {"tokenizer_3": tokenizer}


def _t5_tokenizer(settings: EngineSettings) -> Any:
    from transformers import T5Tokenizer

    for repo_id, subfolder in T5_TOKENIZER_SOURCES:
        try:
            return T5Tokenizer.from_pretrained(
                repo_id,
                subfolder=subfolder or None,
                cache_dir=settings.cache_dir,
                local_files_only=True,
            )
        except (OSError, ValueError, ImportError):
            # ImportError: a tokenizer saved only as spiece.model needs sentencepiece to
            # convert, which is not a dependency; a repository with tokenizer.json loads
            continue
    return None


def _from_single_file(
    cls: type[DiffusionPipeline],
    path: Path,
    info: ModelInfo,
    *,
    dtype: torch.dtype,
    settings: EngineSettings,
    extra: dict[str, Any],
) -> DiffusionPipeline:
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ModelLoadError(f"{path}: single-file checkpoints must be .safetensors")
    config, has_tokenizers = config_folder(path, info)
    components: dict[str, Any] = {}
    if not has_tokenizers:
        if ARCHITECTURE_OF.get(info.family, info.family) == "sd3":
            components.update(_sd3_components(path, settings))
        components.update(_cached_tokenizers(info.family, settings))
    try:
        pipe: DiffusionPipeline = cls.from_single_file(
            str(path),
            config=str(config),
            torch_dtype=dtype,
            local_files_only=True,
            **components,
            **extra,
        )
    except Exception as exc:  # diffusers raises several types for a mismatched checkpoint
        raise ModelLoadError(
            f"{path}: cannot load as a {info.family} checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return pipe


def _cached_tokenizers(family: str, settings: EngineSettings) -> dict[str, Any]:
    """Tokenizers for a real single-file checkpoint, from the Hugging Face cache.

    Files are checked one by one: given a missing vocabulary, ``CLIPTokenizer`` would
    quietly build an empty tokenizer that encodes every prompt as nothing.
    """
    from transformers import CLIPTokenizer

    architecture = ARCHITECTURE_OF.get(family, family)
    found: dict[str, Any] = {}
    for component, sources in TOKENIZER_SOURCES.get(architecture, {}).items():
        shipped = CONFIGS_DIR / architecture / component / "tokenizer_config.json"
        options = {
            key: value
            for key, value in json.loads(shipped.read_text()).items()
            if key in ("unk_token", "bos_token", "eos_token", "pad_token", "model_max_length")
        }
        for repo_id, subfolder in sources:
            files = _tokenizer_files(repo_id, subfolder, settings)
            if files is not None:
                found[component] = CLIPTokenizer(files[0], files[1], **options)
                break
        else:
            repo_id, subfolder = sources[0]
            names = " ".join(_in_subfolder(subfolder, name) for name in TOKENIZER_FILES)
            raise ModelLoadError(
                f"a single-file {family} checkpoint needs the CLIP tokenizer '{component}' "
                f"from {repo_id}, which is not in the Hugging Face cache "
                f"({hub_cache_dir(settings)}) and could not be downloaded; tokenizer "
                "vocabularies are not shipped with sdserve. On a machine with network run: "
                f"hf download {repo_id} {names} "
                "(then copy the cache here), or use the model's diffusers folder"
            )
    return found


TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _in_subfolder(subfolder: str, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _tokenizer_files(repo_id: str, subfolder: str, settings: EngineSettings) -> list[str] | None:
    """Local paths of a tokenizer's vocab and merges (downloaded unless offline), or None."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    paths: list[str] = []
    for name in TOKENIZER_FILES:
        filename = _in_subfolder(subfolder, name)
        found = try_to_load_from_cache(repo_id, filename, cache_dir=settings.cache_dir)
        if not isinstance(found, str):
            if settings.offline:
                return None
            try:
                found = hf_hub_download(repo_id, filename, cache_dir=settings.cache_dir)
            except Exception:  # not on the hub, or the hub cannot be reached
                return None
        paths.append(found)
    return paths
