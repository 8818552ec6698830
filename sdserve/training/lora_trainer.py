"""The LoRA training loop for SD1.x, SD2.x and SDXL pipelines (peft adapters).

One straight story, as in diffusers' training examples: freeze the pipeline, add LoRA
adapters to the UNet (and optionally the text encoder(s)), then per step encode images to
latents, add noise at a random timestep, predict the noise (or the velocity, for
``v_prediction`` models) and take an AdamW step on the MSE. SDXL also gets both text
encoders' penultimate hidden states, the pooled embedding and ``add_time_ids``.

Resumable: every ``checkpointing_steps`` the adapter weights, optimizer, learning-rate
scheduler, step and noise-generator state are written under ``work_dir/checkpoints``;
a new run over the same ``work_dir`` continues from the newest complete checkpoint. The
data order is a pure function of (seed, epoch), so it needs no saved state.

The result is a ``.safetensors`` file in the format ``pipe.load_lora_weights`` reads.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sdserve.domain.training import TrainingInput
from sdserve.errors import Canceled, InvalidInput
from sdserve.training.checkpoints import CHECKPOINT_FILES, CHECKPOINT_PREFIX, META
from sdserve.training.dataset import Example

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LORA_FILE = "lora.safetensors"
_MAX_GRAD_NORM = 1.0


@dataclass
class TrainingHooks:
    """Callbacks of one training run (all optional).

    ``on_step(step, total, loss, lr)`` after each optimizer step; ``on_log(text)`` for
    events worth a log line (resume, checkpoints); ``should_cancel()`` is read after every
    step, so a cancel takes effect within one optimizer step; ``on_checkpoint(folder)``
    after each complete checkpoint is written.
    """

    on_step: Callable[[int, int, float, float], None] = lambda step, total, loss, lr: None
    on_log: Callable[[str], None] = lambda text: None
    should_cancel: Callable[[], bool] = lambda: False
    on_checkpoint: Callable[[Path], None] = lambda folder: None


@dataclass
class TrainingResult:
    """What a finished run produced."""

    lora_path: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # losses of the steps this run made
    resumed_from: int | None = None


def plan_steps(num_examples: int, inp: TrainingInput) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) for ``num_examples`` images."""
    per_epoch = max(1, math.ceil(num_examples / inp.train_batch_size))
    return min(inp.max_train_steps, inp.num_train_epochs * per_epoch), per_epoch


def is_xl(pipe: Any) -> bool:
    """SDXL pipelines have a second text encoder and ``text_time`` conditioning."""
    return getattr(pipe, "text_encoder_2", None) is not None


def train_lora(
    pipe: Any,
    examples: Sequence[Example],
    inp: TrainingInput,
    *,
    work_dir: Path,
    device: str = "cpu",
    weight_dtype: torch.dtype = torch.float32,
    hooks: TrainingHooks | None = None,
) -> TrainingResult:
    """Train a LoRA for ``pipe`` on ``examples``; return the saved ``.safetensors``.

    ``pipe`` is a freshly loaded pipeline that this function owns (adapters are added to
    its modules). Raises :class:`Canceled` when ``hooks.should_cancel`` fires.
    """
    hooks = hooks or TrainingHooks()
    if inp.seed is None:
        raise ValueError("train_lora needs a resolved seed (TrainingInput.with_seed)")
    if not examples:
        raise InvalidInput("input_images", "the archive holds no images")
    if getattr(pipe.unet.config, "in_channels", 4) != 4:
        raise InvalidInput("model", "inpainting models cannot be fine-tuned; use the base model")
    if getattr(pipe, "text_encoder", None) is None:
        raise InvalidInput("model", "this model (an SDXL refiner?) cannot be fine-tuned")
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    xl = is_xl(pipe)
    # peft draws the initial LoRA weights from the global RNG: seed it (and restore it
    # after) so a run, and a run resumed from a checkpoint, are reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(inp.seed)
        trained = _add_adapters(pipe, inp, xl)
    _place(pipe, device, weight_dtype)
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=inp.lora_lr, weight_decay=1e-2)
    total, per_epoch = plan_steps(len(examples), inp)
    lr_scheduler = get_scheduler(
        # diffusers' "constant" ignores warm-up; Replicate's constant warms up first
        "constant_with_warmup" if inp.lr_scheduler == "constant" else inp.lr_scheduler,
        optimizer,
        num_warmup_steps=min(inp.lr_warmup_steps, total),
        num_training_steps=total,
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.get("prediction_type", "epsilon")
    generator = torch.Generator("cpu").manual_seed(inp.seed)
    checkpoints = work_dir / "checkpoints"

    start = 0
    resumed_from = None
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        start = _load_checkpoint(latest, trained, optimizer, lr_scheduler, generator)
        resumed_from = start
        hooks.on_log(f"resumed from checkpoint at step {start} of {total}")

    pixels = torch.stack([_to_tensor(example.image) for example in examples])
    captions = [example.caption for example in examples]
    resolution = examples[0].image.width
    vae = pipe.vae
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None)
    losses: list[float] = []
    for module in trained.values():
        module.train()

    for step in range(start, total):
        batch = _batch_indices(step, per_epoch, len(examples), inp.train_batch_size, inp.seed)
        with torch.no_grad():
            images = pixels[batch].to(device, dtype=vae.dtype)
            dist = vae.encode(images).latent_dist
            noise_for_latents = torch.randn(dist.mean.shape, generator=generator).to(device)
            latents = dist.mean + dist.std * noise_for_latents.to(dist.mean.dtype)
            if shift is not None:
                latents = latents - shift
            latents = (latents * scaling).to(weight_dtype)
        noise = torch.randn(latents.shape, generator=generator).to(device, dtype=latents.dtype)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
        ).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        batch_captions = [captions[index] for index in batch]
        with torch.set_grad_enabled(inp.train_text_encoder):
            conditioning = _encode_text(pipe, batch_captions, device, xl, resolution)
        with _autocast(device, weight_dtype):
            prediction = pipe.unet(noisy, timesteps, **conditioning).sample
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, _MAX_GRAD_NORM)
        optimizer.step()
        lr = float(lr_scheduler.get_last_lr()[0])
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach().item())
        losses.append(value)
        done = step + 1
        hooks.on_step(done, total, value, lr)
        if done < total and done % inp.checkpointing_steps == 0:
            saved = _save_checkpoint(checkpoints, done, trained, optimizer, lr_scheduler, generator)
            hooks.on_log(f"saved checkpoint at step {done}")
            hooks.on_checkpoint(saved)
        if done < total and hooks.should_cancel():
            raise Canceled(f"canceled after step {done} of {total}")

    path = save_lora(pipe, trained, work_dir / LORA_FILE)
    return TrainingResult(lora_path=path, steps=total, losses=losses, resumed_from=resumed_from)


# -- model set-up ----------------------------------------------------------------------


def _add_adapters(pipe: Any, inp: TrainingInput, xl: bool) -> dict[str, Any]:
    """Freeze everything, add LoRA adapters; return the modules that train, by pipe name."""
    from peft import LoraConfig

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    rank = inp.lora_rank
    pipe.unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS
        )
    )
    trained: dict[str, Any] = {"unet": pipe.unet}
    if inp.train_text_encoder:
        encoders = ["text_encoder", "text_encoder_2"] if xl else ["text_encoder"]
        for name in encoders:
            module = getattr(pipe, name)
            module.add_adapter(
                LoraConfig(
                    r=rank,
                    lora_alpha=rank,
                    init_lora_weights="gaussian",
                    target_modules=TEXT_TARGETS,
                )
            )
            trained[name] = module
    return trained


def _place(pipe: Any, device: str, weight_dtype: torch.dtype) -> None:
    """Frozen weights in ``weight_dtype``; the VAE and every trained parameter in float32."""
    from diffusers.training_utils import cast_training_params

    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            _move(module, device, weight_dtype)
    # the SDXL VAE overflows in float16; it only encodes here, so float32 costs little
    _move(pipe.vae, device, torch.float32)
    if weight_dtype != torch.float32:
        modules = [
            getattr(pipe, name)
            for name in ("unet", "text_encoder", "text_encoder_2")
            if getattr(pipe, name, None) is not None
        ]
        cast_training_params(modules, dtype=torch.float32)


def _move(module: Any, device: str, dtype: torch.dtype) -> None:
    """Move only when needed (diffusers warns on every ``to(dtype)`` of a loaded model)."""
    if module.device != torch.device(device) or module.dtype != dtype:
        module.to(device, dtype=dtype)


def _autocast(device: str, weight_dtype: torch.dtype) -> Any:
    import contextlib

    if device.startswith("cuda") and weight_dtype != torch.float32:
        return torch.autocast("cuda", dtype=weight_dtype)
    return contextlib.nullcontext()


def _to_tensor(image: Any) -> torch.Tensor:
    """RGB PIL image → CHW float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _batch_indices(step: int, per_epoch: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The examples of ``step``: a per-epoch shuffle seeded by (seed, epoch)."""
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))
    return [int(index) for index in order[position * batch_size : (position + 1) * batch_size]]


def _tokens(tokenizer: Any, captions: list[str], device: str) -> torch.Tensor:
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


def _encode_text(
    pipe: Any, captions: list[str], device: str, xl: bool, resolution: int
) -> dict[str, Any]:
    """UNet keyword arguments for ``captions``: hidden states (and SDXL's added conditions)."""
    if not xl:
        hidden = pipe.text_encoder(_tokens(pipe.tokenizer, captions, device))[0]
        return {"encoder_hidden_states": hidden}
    states = []
    pooled = None
    for tokenizer, encoder in (
        (pipe.tokenizer, pipe.text_encoder),
        (pipe.tokenizer_2, pipe.text_encoder_2),
    ):
        out = encoder(_tokens(tokenizer, captions, device), output_hidden_states=True)
        pooled = out[0]  # the projected pooled embedding of the last encoder is used
        states.append(out.hidden_states[-2])
    hidden = torch.cat(states, dim=-1)
    # (original size, crop top-left, target size): images were fitted to a square
    time_ids = torch.tensor(
        [[resolution, resolution, 0, 0, resolution, resolution]], dtype=hidden.dtype, device=device
    ).repeat(len(captions), 1)
    return {
        "encoder_hidden_states": hidden,
        "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids},
    }


# -- saving ----------------------------------------------------------------------------


def save_lora(pipe: Any, trained: dict[str, Any], path: Path) -> Path:
    """Write the adapters as diffusers LoRA ``.safetensors`` (``load_lora_weights`` format)."""
    from diffusers.utils import convert_state_dict_to_diffusers  # type: ignore[attr-defined]
    from peft import get_peft_model_state_dict

    layers = {
        f"{name}_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        for name, module in trained.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(
        path.parent, weight_name=path.name, safe_serialization=True, **layers
    )
    return path


# -- checkpoints -----------------------------------------------------------------------


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder (one with ``meta.json``), or None."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        if child.name.startswith(CHECKPOINT_PREFIX) and (child / META).is_file():
            try:
                found.append((int(child.name[len(CHECKPOINT_PREFIX) :]), child))
            except ValueError:
                continue
    return max(found)[1] if found else None


def _save_checkpoint(
    folder: Path,
    step: int,
    trained: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
) -> Path:
    """Write a checkpoint atomically (a temporary folder renamed), keep only the newest."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CHECKPOINT_PREFIX}{step}"
    partial = folder / f".partial-{step}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    weights = {
        f"{name}.{key}": tensor.detach().to("cpu", torch.float32).contiguous()
        for name, module in trained.items()
        for key, tensor in get_peft_model_state_dict(module).items()
    }
    adapters, state = CHECKPOINT_FILES
    save_file(weights, str(partial / adapters))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "generator": generator.get_state(),
        },
        partial / state,
    )
    # meta.json last: its presence marks the checkpoint complete
    (partial / META).write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for child in folder.iterdir():
        if child != final and child.name.startswith(CHECKPOINT_PREFIX):
            shutil.rmtree(child, ignore_errors=True)
    return final


def _load_checkpoint(
    path: Path,
    trained: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    generator: torch.Generator,
) -> int:
    """Restore a checkpoint into the run; return its step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapters, state_file = CHECKPOINT_FILES
    weights = load_file(str(path / adapters))
    for name, module in trained.items():
        prefix = f"{name}."
        own = {
            key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)
        }
        set_peft_model_state_dict(module, own)
    # written by this code (maybe on another machine, through the bucket); weights_only
    # keeps it to plain data
    state = torch.load(path / state_file, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    generator.set_state(state["generator"])
    return int(json.loads((path / META).read_text())["step"])
