"""The library noise named in ``sdserve.logs`` is dropped; everything else still shows."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator

import pytest

from sdserve.logs import silence_library_noise


class Collect(logging.Handler):
    """The messages a logger lets through (whatever transformers does to propagation)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def collect() -> Iterator[Callable[[str], Collect]]:
    attached: list[tuple[logging.Logger, Collect]] = []

    def attach(name: str) -> Collect:
        handler = Collect()
        logging.getLogger(name).addHandler(handler)
        attached.append((logging.getLogger(name), handler))
        return handler

    yield attach
    for logger, handler in attached:
        logger.removeHandler(handler)


def test_named_library_messages_are_dropped_and_others_kept(
    collect: Callable[[str], Collect],
) -> None:
    silence_library_noise()
    imports = collect("transformers.utils.import_utils")
    config = collect("transformers.configuration_utils")
    migration = collect("alembic.runtime.migration")
    log = logging.getLogger
    log("transformers.utils.import_utils").warning(
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
        "`CLIPImageProcessorPil` for backward compatibility."
    )
    log("transformers.configuration_utils").warning(
        "Model config: bos_token_id must be `None` or an integer within the vocabulary "
        "(between 0 and 99), got 49406. This may result in unexpected behavior."
    )
    diffusers = collect("diffusers.models.modeling_utils")
    for modules in ("[]", "['vae']"):
        log("diffusers.models.modeling_utils").warning(
            f"There are modules in AutoencoderKL that should be kept in float32: {modules}. "
            "Casting directly with `to()` can lead to inconsistent results; ..."
        )
    lora = collect("diffusers.loaders.lora_base")
    log("diffusers.loaders.lora_base").warning(
        "No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'. "
        "This is safe to ignore if LoRA state dict didn't originally have any CLIPTextModel "
        "related params."
    )
    log("diffusers.loaders.lora_base").warning("LoRA keys do not match the UNet")
    saving = collect("diffusers.pipelines.pipeline_utils")
    log("diffusers.pipelines.pipeline_utils").warning(
        "self.text_encoder_3=None of type <class 'NoneType'> cannot be saved."
    )
    log("diffusers.pipelines.pipeline_utils").warning(
        "self.vae=<object> of type <class 'object'> cannot be saved."
    )
    log("alembic.runtime.migration").info("Running upgrade  -> 0001")
    log("transformers.utils.import_utils").warning("something else about an import")
    log("alembic.runtime.migration").warning("a real migration problem")
    assert imports.messages == ["something else about an import"]
    assert config.messages == []
    assert migration.messages == ["a real migration problem"]
    assert lora.messages == ["LoRA keys do not match the UNet"]
    assert saving.messages == ["self.vae=<object> of type <class 'object'> cannot be saved."]
    assert len(diffusers.messages) == 1 and "float32: ['vae']" in diffusers.messages[0]


def test_uvicorn_start_up_lines_do_not_read_like_errors(caplog: pytest.LogCaptureFixture) -> None:
    silence_library_noise()
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.error").info("Application startup complete.")
    assert [record.name for record in caplog.records] == ["uvicorn"]


def test_only_the_named_warnings_are_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()  # filters added after "always" take precedence
        warnings.warn(
            "`torch_dtype` is deprecated and will be removed in version 1.0.0. "
            "Please use `dtype` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn(
            "Could not find a config file in /data/demo/models/tiny-sd - will assume that the "
            "vocabulary was not modified.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("`other_arg` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something a user should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "`other_arg` is deprecated",
        "something a user should see",
    ]
