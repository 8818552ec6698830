"""ControlNet preprocessors that need weights ("annotators"), served from model folders.

A1111's ControlNet extension runs many preprocessors on networks of its own (MiDaS depth,
OpenPose, HED…). sdserve serves those it can from model folders the operator puts in the
annotators folder (``--annotator-dir``, ``<data dir>/annotators`` unless set), one folder
per model: a transformers model (``config.json``, ``preprocessor_config.json``,
``.safetensors`` weights), or one of the networks sdserve writes itself
(``engine.annotator_networks``: a ``config.json`` saying only its ``model_type`` and the
checkpoint converted to ``model.safetensors``). A folder with pickle weights only is
refused and logged. A folder's ``model_type`` says which A1111 modules it gives:

=================================  ======================================================
``dpt`` (Intel/dpt-hybrid-midas…)  ``depth_midas`` and ``normal_midas`` (the normal map
                                   A1111 derives from the MiDaS depth)
``depth_anything``                 ``depth_anything``; ``depth_anything_v2`` when the
                                   folder's name says ``v2``
``zoedepth``                       ``depth_zoe``
``upernet`` / ``segformer``,       ``seg_ufade20k``: A1111's ADE20K segmentation slot,
150 labels (ADE20K)                filled by an UperNet or SegFormer ADE20K model coloured
                                   with the ADE20K palette the seg ControlNets learnt
``hed`` (``ControlNetHED.pth``)    ``softedge_hed`` and ``softedge_hedsafe`` (and their
                                   older names ``hed``, ``hed_safe``)
``lineart`` (``sk_model.pth``)     ``lineart_realistic``
``lineart_coarse``                 ``lineart_coarse``
(``sk_model2.pth``)
=================================  ======================================================

A module is listed only while a folder gives it; two folders giving one module: the first
by folder name wins (logged). The other modules A1111 runs on weights (:data:`WEIGHT_MODULES`
without ``gives``: openpose, PiDiNet/TEED softedge, anime lineart, MLSD, normal_bae…) come from
``controlnet_aux``, which sdserve does not run; asking for one is a 422 saying so.

This module reads JSON and file names only, never weights, so the API process lists and
checks annotators without torch; the engine runs them (``engine.annotators``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from sdserve.errors import InvalidInput, ModelLoadError
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.catalog import short_hash
from sdserve.models.controlnet.preprocessors import RESOLUTION, Preprocessor, Slider
from sdserve.models.folders import ScannedFolder
from sdserve.models.references import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, read_json

log = logging.getLogger(__name__)

#: What the engine makes of a model's output: a depth map, a normal map from the depth,
#: a segmentation coloured with the ADE20K palette, HED soft edges (plain or quantised:
#: "safe"), or white lines on black.
AnnotatorKind = Literal["depth", "normal", "seg", "softedge", "softedge_safe", "lineart"]
#: Labels of an ADE20K segmentation model (150 classes, no background class).
ADE20K_LABELS = 150
#: The ``model_type`` values of the depth models and of the segmentation models served.
DEPTH_MODEL_TYPES = ("dpt", "depth_anything", "zoedepth")
SEG_MODEL_TYPES = ("upernet", "segformer")
#: The ``model_type`` values of the networks sdserve writes itself (no transformers class,
#: no image processor) and the one weights file such a folder holds.
NETWORK_MODEL_TYPES = ("hed", "lineart", "lineart_coarse")
NETWORK_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class WeightModule:
    """An A1111 preprocessor that runs on weights, :class:`~.preprocessors.Preprocessor`-
    like (name, control type, sliders). ``gives``: the model folder that serves it, in
    words for an error message (None: not servable here); ``kind``: what the engine makes."""

    name: str
    control_type: str
    gives: str | None = None
    kind: AnnotatorKind = "depth"
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    uses_resolution: bool = True
    label: str | None = None
    needs_mask: bool = False
    needs_weights: bool = True

    @property
    def network(self) -> bool:
        """Whether one of sdserve's own networks runs it (not a transformers model)."""
        return self.kind in ("softedge", "softedge_safe", "lineart")


#: A preprocessor as the service and the dialects see it: built in, or run on weights.
Module = Preprocessor | WeightModule


def _network(model_type: str, checkpoint: str) -> str:
    return (
        f"{checkpoint} converted to {NETWORK_WEIGHTS} with a config.json of "
        f'{{"model_type": "{model_type}"}}'
    )


_HED = _network("hed", "lllyasviel/Annotators' ControlNetHED.pth")
_DPT = "a transformers DPT depth model (model_type dpt, such as Intel/dpt-hybrid-midas)"
_SERVED = (
    WeightModule("depth_midas", "depth", _DPT),
    WeightModule(
        "normal_midas",
        "normal",
        _DPT,
        kind="normal",
        threshold_a=Slider("Normal Background Threshold", 0.4, 0, 1, 0.01),
    ),
    WeightModule(
        "depth_anything",
        "depth",
        "a Depth Anything model (model_type depth_anything, such as "
        "LiheYoung/depth-anything-small-hf)",
    ),
    WeightModule(
        "depth_anything_v2",
        "depth",
        "a Depth Anything V2 model (model_type depth_anything, 'v2' in its folder's name, such "
        "as depth-anything/Depth-Anything-V2-Small-hf)",
    ),
    WeightModule(
        "depth_zoe", "depth", "a ZoeDepth model (model_type zoedepth, such as Intel/zoedepth-nyu)"
    ),
    WeightModule(
        "seg_ufade20k",
        "seg",
        "an ADE20K segmentation model (model_type upernet or segformer with 150 labels, such "
        "as openmmlab/upernet-convnext-small or nvidia/segformer-b0-finetuned-ade-512-512)",
        kind="seg",
    ),
    WeightModule("softedge_hed", "softedge", _HED, kind="softedge"),
    WeightModule("softedge_hedsafe", "softedge", _HED, kind="softedge_safe"),
    WeightModule("hed", "softedge", _HED, kind="softedge"),
    WeightModule("hed_safe", "softedge", _HED, kind="softedge_safe"),
    WeightModule(
        "lineart_realistic",
        "lineart",
        _network("lineart", "lllyasviel/Annotators' sk_model.pth"),
        kind="lineart",
    ),
    WeightModule(
        "lineart_coarse",
        "lineart",
        _network("lineart_coarse", "lllyasviel/Annotators' sk_model2.pth"),
        kind="lineart",
    ),
)
#: A1111 modules whose networks come from controlnet_aux (not served here).
_ELSEWHERE = {
    "openpose": "openpose",
    "openpose_face": "openpose",
    "openpose_faceonly": "openpose",
    "openpose_full": "openpose",
    "openpose_hand": "openpose",
    "dw_openpose_full": "openpose",
    "animal_openpose": "openpose",
    "depth_leres": "depth",
    "depth_leres++": "depth",
    "depth_hand_refiner": "depth",
    "normal_bae": "normal",
    "normal_dsine": "normal",
    "softedge_pidinet": "softedge",
    "softedge_pidisafe": "softedge",
    "softedge_teed": "softedge",
    "softedge_anyline": "softedge",
    "lineart_anime": "lineart",
    "lineart_anime_denoise": "lineart",
    "mlsd": "mlsd",
    "seg_ofade20k": "seg",
    "seg_ofcoco": "seg",
    "seg_anime_face": "seg",
    "scribble_hed": "scribble",
    "scribble_pidinet": "scribble",
    "mediapipe_face": "openpose",
}
#: Every A1111 module that needs weights, by name: the servable ones first, in the order
#: ``auto`` prefers them for their control type.
WEIGHT_MODULES: Mapping[str, WeightModule] = MappingProxyType(
    {
        **{module.name: module for module in _SERVED},
        **{name: WeightModule(name, kind) for name, kind in _ELSEWHERE.items()},
    }
)


def known(name: str) -> Module | None:
    """The built-in preprocessor or weight module of that A1111 name (or interface label),
    present or not; None for a name A1111 does not have."""
    try:
        return preprocessors.get(name)
    except InvalidInput:
        return WEIGHT_MODULES.get(name)


@dataclass(frozen=True)
class Annotator:
    """A weight module served from a model folder: what the engine loads and runs."""

    module: WeightModule
    folder: Path
    model_type: str
    short_hash: str

    @property
    def name(self) -> str:
        return self.module.name


def inspect_annotator(folder: Path) -> list[Annotator]:
    """The modules a transformers model folder gives, by its ``model_type``. Raises
    :class:`ModelLoadError` for a folder that is not a served annotator (no config, pickle
    weights only, a model type or label count not served)."""
    config = read_json(folder / "config.json")
    if config is None:
        raise ModelLoadError(f"{folder}: no config.json; not a transformers model folder")
    model_type = str(config.get("model_type", ""))
    if model_type in NETWORK_MODEL_TYPES:
        weights = [folder / NETWORK_WEIGHTS] if (folder / NETWORK_WEIGHTS).is_file() else []
    elif not (folder / "preprocessor_config.json").is_file():
        raise ModelLoadError(f"{folder}: no preprocessor_config.json (its image processor)")
    else:
        weights = sorted(folder.glob(f"*{SAFETENSORS_SUFFIX}"))
    if not weights:
        pickles = [path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelLoadError(
                f"{folder}: pickle weights only ({', '.join(sorted(pickles))}); only "
                ".safetensors is loaded (save it with safe_serialization=True)"
            )
        wanted = NETWORK_WEIGHTS if model_type in NETWORK_MODEL_TYPES else ".safetensors"
        raise ModelLoadError(f"{folder}: no {wanted} weights")
    names = _modules_of(config, model_type, folder)
    digest = short_hash(weights[0])
    return [Annotator(WEIGHT_MODULES[name], folder, model_type, digest) for name in names]


def _modules_of(config: dict[str, Any], model_type: str, folder: Path) -> list[str]:
    architectures = [str(name) for name in config.get("architectures") or []]
    segments = any(name.endswith("ForSemanticSegmentation") for name in architectures)
    if model_type in SEG_MODEL_TYPES or segments:
        labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 0))
        if labels != ADE20K_LABELS:
            raise ModelLoadError(
                f"{folder}: a segmentation model of {labels} labels; seg_ufade20k takes an "
                f"ADE20K model ({ADE20K_LABELS} labels)"
            )
        return ["seg_ufade20k"]
    if model_type == "dpt":
        return ["depth_midas", "normal_midas"]
    if model_type == "depth_anything":
        return ["depth_anything_v2" if "v2" in folder.name.lower() else "depth_anything"]
    if model_type == "zoedepth":
        return ["depth_zoe"]
    if model_type == "hed":
        return ["softedge_hed", "softedge_hedsafe", "hed", "hed_safe"]
    if model_type == "lineart":
        return ["lineart_realistic"]
    if model_type == "lineart_coarse":
        return ["lineart_coarse"]
    raise ModelLoadError(
        f"{folder}: model_type {model_type!r} gives no preprocessor; served: "
        f"{', '.join(DEPTH_MODEL_TYPES + SEG_MODEL_TYPES + NETWORK_MODEL_TYPES)}"
    )


class AnnotatorCatalog:
    """The annotators in ``folder`` (read again when it changes) and, with the built-in
    preprocessors, the modules a request may name. Thread-safe; cheap to ask."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._scanned: ScannedFolder[dict[str, Annotator]] = ScannedFolder(
            folder, _read_annotators, dict, keep=Path.is_dir
        )

    def all(self) -> list[Annotator]:
        """The present annotators, in :data:`WEIGHT_MODULES` order."""
        return list(self._in_folder().values())

    def annotator(self, name: str) -> Annotator | None:
        """The present annotator serving module ``name``, or None."""
        return self._in_folder().get(name)

    def modules(self) -> dict[str, Module]:
        """The modules a request may name now: the built-in preprocessors, then the
        present annotators."""
        found: dict[str, Module] = dict(preprocessors.PREPROCESSORS)
        found.update({annotator.name: annotator.module for annotator in self.all()})
        return found

    def get(self, name: str, *, field: str = "preprocessor") -> Module:
        """The module of that A1111 name (or label). Raises :class:`InvalidInput` naming
        ``field``: a name A1111 does not have, or a weight module whose weights are absent
        (saying which folder they go in) or that is not served here."""
        module = known(name)
        if module is None:
            raise InvalidInput(field, f"unknown preprocessor {name!r}", allowed=self._names())
        if not module.needs_weights or self.annotator(module.name) is not None:
            return module
        assert isinstance(module, WeightModule)
        if module.gives is None:
            raise InvalidInput(
                field,
                f"the {module.name} preprocessor is not available: its network comes from "
                "controlnet_aux, which this server does not run",
                allowed=self._names(),
            )
        where = str(self.folder) if self.folder is not None else "the annotators folder"
        files = "" if module.network else " (config.json, preprocessor_config.json, .safetensors)"
        raise InvalidInput(
            field,
            f"the {module.name} preprocessor needs weights: put {module.gives} in a folder "
            f"of its own in {where}{files}",
            allowed=self._names(),
        )

    def default_for(self, control_type: str | None) -> str | None:
        """What ``auto`` means for a control type: the built-in default, else the first
        present annotator of that type (``depth_midas`` first for depth); None where
        neither fits."""
        built_in = preprocessors.default_for(control_type)
        if built_in is not None or control_type is None:
            return built_in
        return next((a.name for a in self.all() if a.module.control_type == control_type), None)

    def module_detail(self) -> dict[str, Any]:
        """A1111's ``module_detail``: the built-in preprocessors', then each present
        annotator's sliders (the resolution first)."""
        detail = preprocessors.module_detail()
        for annotator in self.all():
            module = annotator.module
            sliders = (RESOLUTION, module.threshold_a, module.threshold_b)
            detail[module.name] = {
                "model_free": False,
                "sliders": [slider.as_json() for slider in sliders if slider is not None],
            }
        return detail

    def _names(self) -> list[str]:
        return sorted(self.modules())

    def _in_folder(self) -> dict[str, Annotator]:
        return self._scanned.get()


def _read_annotators(entries: list[Path]) -> dict[str, Annotator]:
    """The annotators a folder's subfolders give, by module in :data:`WEIGHT_MODULES`
    order; a module two folders give comes from the first by name (logged)."""
    found: dict[str, Annotator] = {}
    for entry in entries:
        try:
            given = inspect_annotator(entry)
        except ModelLoadError as exc:
            log.warning("annotators: %s; not served", exc)
            continue
        for annotator in given:
            first = found.setdefault(annotator.name, annotator)
            if first is not annotator:
                log.warning(
                    "annotators: %s gives %s, which %s gives already; %s is used",
                    entry.name,
                    annotator.name,
                    first.folder.name,
                    first.folder.name,
                )
    return {name: found[name] for name in WEIGHT_MODULES if name in found}


__all__ = [
    "ADE20K_LABELS",
    "NETWORK_MODEL_TYPES",
    "NETWORK_WEIGHTS",
    "WEIGHT_MODULES",
    "Annotator",
    "AnnotatorCatalog",
    "AnnotatorKind",
    "Module",
    "WeightModule",
    "inspect_annotator",
    "known",
]
