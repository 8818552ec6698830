"""What an sdserve process prints: our lines, uvicorn's, and the libraries' noise turned off.

``serve``, ``worker``, ``generate`` and ``train`` call :func:`setup_logging` first. Library
messages a user can do nothing about are dropped here, each by the logger that emits it
and its message, or by warning category and message; every other warning still shows.
:func:`quiet_library_progress` turns off the diffusers/transformers loading bars in a
server, whose log gets one ``loaded <model> in N s`` line from the engine instead.
"""

from __future__ import annotations

import logging
import re
import warnings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: logger → pattern of the records it emits that are dropped.
DROPPED_RECORDS: dict[str, str] = {
    # without torchvision, transformers falls back to its PIL image processors (what the
    # safety checker uses anyway) and says so once per class
    "transformers.utils.import_utils": r"`\w+` requires torchvision \(not installed\)",
    # the tiny demo models keep CLIP's bos/eos token ids with a 100-word vocabulary
    "transformers.configuration_utils": (
        r"Model config: (bos|eos|pad)_token_id must be `None` or an integer within the vocabulary"
    ),
    # said on every .to(dtype) of a diffusers model, even with no such module (the SDXL
    # VAE is cast back to float32); a non-empty list still shows
    "diffusers.models.modeling_utils": r"that should be kept in float32: \[\]\.",
    # loading an embedding grows the token table; diffusers then writes the embedding's
    # vectors into the new rows, so how transformers initialised them does not matter
    "transformers.modeling_utils": (
        r"The new embeddings will be initialized from a multivariate normal distribution"
    ),
    # a LoRA trained on the UNet only (sdserve train's default) has no text-encoder part,
    # which diffusers reports at every load; the UNet's own warning still shows
    "diffusers.loaders.lora_base": (
        r"No LoRA keys associated to \w+ found with the prefix='text_encoder(_2)?'"
    ),
    # the tiny SD3 is saved without T5 (text_encoder_3=None), as SD3 runs without it
    "diffusers.pipelines.pipeline_utils": r"=None of type <class 'NoneType'> cannot be saved",
}

#: (category, message pattern) of library warnings that are ignored.
IGNORED_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # we pass torch_dtype because the oldest diffusers we support has no dtype= yet
    (FutureWarning, r"`torch_dtype` is deprecated"),
    # peft looks for a config.json beside a diffusers pipeline's folder to see whether the
    # vocabulary was resized; a pipeline has none, and sdserve never resizes it
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary"),
    # the same look-up of a local folder's name on the hub, online: a folder is no hub id
    (UserWarning, r"Unable to fetch remote file due to the following error .* config\.json"),
    # diffusers' T2I-Adapter pipeline calls its own deprecated decoder at every image
    (FutureWarning, r"The decode_latents method is deprecated"),
)

#: loggers whose INFO lines are for their developers, not for someone running sdserve.
QUIET_LOGGERS: dict[str, int] = {
    # "Context impl SQLiteImpl", "Running upgrade 0001 -> 0002", plugin set-up...
    "alembic": logging.WARNING,
}


#: loggers shown under another name: uvicorn logs its start-up and shutdown INFO lines as
#: "uvicorn.error", which reads like an error.
RENAMED_LOGGERS: dict[str, str] = {"uvicorn.error": "uvicorn"}


class Renamed(logging.Filter):
    """Shows the records of one logger under another name."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.shown_as = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = self.shown_as
        return True


class DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr as ``time LEVEL logger: message`` and silence the known noise."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    silence_library_noise()


def silence_library_noise() -> None:
    """Install the filters and levels above (once; calling again adds nothing)."""
    for name, pattern in DROPPED_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMatching) for f in logger.filters):
            logger.addFilter(DropMatching(pattern))
    for name, shown_as in RENAMED_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, Renamed) for f in logger.filters):
            logger.addFilter(Renamed(shown_as))
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def quiet_library_progress() -> None:
    """No diffusers/transformers progress bars (loading components, weights, shards).

    Imports both libraries, hence torch: call it where a worker builds its engine. Hub
    download bars stay: a first download can take minutes.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
