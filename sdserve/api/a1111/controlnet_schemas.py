"""The sd-webui-controlnet extension's API in the A1111 dialect: units and listings.

Units arrive as ``alwayson_scripts.ControlNet.args`` (the script key in any case), one
dict per unit, in the shapes ``webuiapi.ControlNetUnit.to_dict()`` and the extension itself
accept, and become canonical :class:`~sdserve.domain.controls.ControlUnit` values. What the
extension does with its loose inputs, this mapping does too, and says so here:

* a unit with ``enabled`` false or no model (``"None"``) takes no part (dropped);
* ``image`` is raw base64 or a data URI, ``{"image": ..., "mask": ...}`` or
  ``[image, mask]``; empty means the img2img init image (and then img2img's own
  ``resize_mode``, as the extension does); a txt2img unit without one is a 422;
* ``threshold_a``/``threshold_b`` outside the module's slider (the extension sends -1 or
  64 for sliders a module lacks) and ``processor_res`` outside 64..2048 mean "the
  module's default", as the extension resets them;
* ``resize_mode``/``control_mode`` as text (the old names too) or their numbers;
* ``hr_option`` (``"Both"``, ``"Low res only"``, ``"High res only"`` or 0..2) is the
  unit's ``hires_fix``: which passes of the hires fix it steers;
* ``low_vram`` is accepted and changes nothing.

Detected maps: the extension appends each unit's detected map to ``images`` unless
``save_detected_map`` is false or the option ``control_net_no_detectmap`` is set. Here the
maps come back (:attr:`MappedUnits.wants_maps`, the canonical ``return_control_maps``,
which returns every unit's map) when at least one kept unit runs a preprocessor
(``module`` other than ``"none"``) and asks to save it: a unit whose image is a map
already would only get its own image back.

IP-Adapter units: as in the extension, a unit whose ``module`` is an IP-Adapter module
(:data:`IP_ADAPTER_MODULES`: ``ip-adapter-auto``, ``ip-adapter_clip_sd15``,
``ip-adapter_clip_sdxl``, ``ip-adapter_clip_sdxl_plus_vith`` or the UI labels
``ip-adapter_clip_h``/``ip-adapter_clip_g``) is an image prompt, not a ControlNet: its
``model`` (a served IP-Adapter's ``name [hash]`` title or name), image and ``weight`` become
the canonical ``ip_adapter``, ``ip_adapter_image`` and ``ip_adapter_scale``
(:attr:`MappedUnits.image_prompt`). The module only says which CLIP encoder the extension
runs; a served IP-Adapter brings its own encoder, so every IP-Adapter module works with
every IP-Adapter (``ip-adapter-auto`` is what the extension picks by default). One such
unit per request (the canonical input has one image prompt); a second is refused naming
its ``module``. An img2img unit without an image uses the init image, as the extension
does. What the extension does not apply to IP-Adapter units (``control_mode``,
``resize_mode``, ``processor_res``, thresholds, ``pixel_perfect``) changes nothing; what
it would apply and sdserve cannot, a mask (the extension's attention mask) and a
``guidance_start``/``guidance_end`` range, is refused naming the field: the image prompt
steers every step of the whole image here.

A refused unit field is named ``alwayson_scripts.<key>.args.<n>.<field>`` with the key and
the index the client sent (:meth:`MappedUnits.wire_names`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.domain.controls import NO_PREPROCESSOR
from sdserve.errors import InvalidInput
from sdserve.models.controlnet.annotators import AnnotatorCatalog, known
from sdserve.models.controlnet.catalog import ControlNetSpec
from sdserve.models.ip_adapter import IpAdapterSpec, title_name

#: The extension's API version (``GET /controlnet/version``).
API_VERSION = 2
#: The script key of the extension in ``alwayson_scripts`` (matched in any case).
SCRIPT_KEY = "controlnet"
#: What ``/sdapi/v1/scripts`` lists so clients (``webuiapi``) know the extension is there.
SCRIPT_NAMES = ["controlnet m2m", "controlnet"]
#: The model value that means "no ControlNet" (the unit is dropped).
NO_MODEL = "None"

#: Resize modes, by the extension's text (current and older names) and number.
RESIZE_MODES: dict[str, str] = {
    "just resize": "just_resize",
    "crop and resize": "crop_and_resize",
    "resize and fill": "resize_and_fill",
    "inner fit (scale to fit)": "crop_and_resize",
    "scale to fit (inner fit)": "crop_and_resize",
    "outer fit (shrink to fit)": "resize_and_fill",
    "envelope (outer fit)": "resize_and_fill",
    "envelope (extend to fit)": "resize_and_fill",
    "just resize (latent upscale)": "just_resize",
}
#: By number: 0 just resize, 1 crop and resize, 2 resize and fill, 3 (A1111's latent
#: upscale, which the extension reads as) just resize. img2img's ``resize_mode`` too.
RESIZE_NUMBERS = ("just_resize", "crop_and_resize", "resize_and_fill", "just_resize")
#: Control modes by the extension's text and number (the canonical words work too).
CONTROL_MODES: dict[str, str] = {
    "balanced": "balanced",
    "my prompt is more important": "prompt",
    "controlnet is more important": "controlnet",
    "prompt": "prompt",
    "controlnet": "controlnet",
}
CONTROL_NUMBERS = ("balanced", "prompt", "controlnet")
#: UI names the extension lists with ``alias_names=true`` (and accepts as ``module``).
MODULE_ALIASES: dict[str, str] = {
    "invert": "invert (from white bg & black line)",
    "lineart_standard": "lineart_standard (from white bg & black line)",
}
_BY_ALIAS = {alias: name for name, alias in MODULE_ALIASES.items()}
#: Our control types → the extension's control type tags (``/controlnet/control_types``).
CONTROL_TYPE_TAGS: dict[str, str] = {
    "canny": "Canny",
    "depth": "Depth",
    "normal": "NormalMap",
    "openpose": "OpenPose",
    "mlsd": "MLSD",
    "lineart": "Lineart",
    "softedge": "SoftEdge",
    "scribble": "Scribble",
    "seg": "Segmentation",
    "shuffle": "Shuffle",
    "tile": "Tile",
    "inpaint": "Inpaint",
    "ip2p": "InstructP2P",
}
#: The extension's IP-Adapter modules (the CLIP encoders it runs) → their UI labels
#: (``alias_names=true``); ``ip-adapter-auto`` first: the extension's default.
IP_ADAPTER_MODULES: dict[str, str] = {
    "ip-adapter-auto": "ip-adapter-auto",
    "ip-adapter_clip_sd15": "ip-adapter_clip_h",
    "ip-adapter_clip_sdxl": "ip-adapter_clip_g",
    "ip-adapter_clip_sdxl_plus_vith": "ip-adapter_clip_sdxl_plus_vith",
}
_IP_ADAPTER_BY_NAME = {
    **{name: name for name in IP_ADAPTER_MODULES},
    **{label: name for name, label in IP_ADAPTER_MODULES.items()},
}
#: The extension's control type tag of IP-Adapters (``/controlnet/control_types``).
IP_ADAPTER_TAG = "IP-Adapter"
#: The processor resolution canonical units accept; others mean "the default".
PROCESSOR_RES = (64, 2048)

#: Canonical unit fields → the extension's names (for naming a refused field).
_UNIT_WIRE = {
    "model": "model",
    "image": "image",
    "mask": "mask",
    "preprocessor": "module",
    "conditioning_scale": "weight",
    "start": "guidance_start",
    "end": "guidance_end",
    "resize_mode": "resize_mode",
    "processor_res": "processor_res",
    "pixel_perfect": "pixel_perfect",
    "threshold_a": "threshold_a",
    "threshold_b": "threshold_b",
    "control_mode": "control_mode",
    "hires_fix": "hr_option",
}

#: The canonical image prompt fields → the IP-Adapter unit's names.
_IMAGE_PROMPT_WIRE = {
    "ip_adapter": "model",
    "ip_adapter_image": "image",
    "ip_adapter_scale": "weight",
}


class UnitArgs(BaseModel):
    """One unit as the extension reads it; unknown keys are accepted and ignored (the
    extension has many: ``advanced_weighting``, ``union_control_type``…)."""

    model_config = ConfigDict(extra="allow")

    enabled: bool | None = True
    image: str | dict[str, Any] | list[Any] | None = None
    input_image: str | dict[str, Any] | list[Any] | None = None  # the old name
    mask: str | None = None
    mask_image: str | None = None  # SD Forge's name
    module: str | None = NO_PREPROCESSOR
    model: str | None = NO_MODEL
    weight: float | None = Field(default=1.0, ge=0, le=2)
    resize_mode: str | int | None = "Crop and Resize"
    low_vram: bool | None = False
    lowvram: bool | None = None  # the old name
    processor_res: float | None = -1
    threshold_a: float | None = -1
    threshold_b: float | None = -1
    guidance_start: float | None = Field(default=0.0, ge=0, le=1)
    guidance_end: float | None = Field(default=None, ge=0, le=1)
    guidance: float | None = Field(default=None, ge=0, le=1)  # the old name of the end
    control_mode: str | int | None = "Balanced"
    pixel_perfect: bool | None = False
    hr_option: str | int | None = "Both"
    save_detected_map: bool | None = True


@dataclass
class MappedUnits:
    """The kept units as canonical dicts, where each came from, and whether the detected
    maps go back with the images."""

    key: str = "ControlNet"
    units: list[dict[str, Any]] = field(default_factory=list)
    wire_index: list[int] = field(default_factory=list)
    wants_maps: bool = False
    #: the IP-Adapter unit's canonical ``ip_adapter*`` values (no ``ip_adapter_image``: an
    #: img2img unit that takes the init image) and its index as sent
    image_prompt: dict[str, Any] | None = None
    image_prompt_index: int | None = None

    def wire_names(self) -> dict[str, str]:
        """Canonical unit fields (``controlnets.0.model``, ``ip_adapter``) → the fields
        the client sent (``alwayson_scripts.ControlNet.args.2.model``)."""
        prefix = f"alwayson_scripts.{self.key}.args"
        names = {"controlnets": prefix}
        for kept, sent in enumerate(self.wire_index):
            names[f"controlnets.{kept}"] = f"{prefix}.{sent}"
            for canonical, wire in _UNIT_WIRE.items():
                names[f"controlnets.{kept}.{canonical}"] = f"{prefix}.{sent}.{wire}"
        if self.image_prompt_index is not None:
            for canonical, wire in _IMAGE_PROMPT_WIRE.items():
                names[canonical] = f"{prefix}.{self.image_prompt_index}.{wire}"
        return names


def find_script(scripts: object) -> tuple[str, Any] | None:
    """The extension's entry in ``alwayson_scripts`` (key in any case) and its value."""
    if not isinstance(scripts, Mapping):
        return None
    for key, value in scripts.items():
        if isinstance(key, str) and key.lower() == SCRIPT_KEY:
            return key, value
    return None


def map_units(
    scripts: object,
    *,
    img2img: bool,
    init_resize_mode: int | None = None,
    no_detectmap: bool = False,
    to_image: Any,
    modules: AnnotatorCatalog | None = None,
) -> MappedUnits:
    """The ControlNet units of ``alwayson_scripts`` (``scripts``) as canonical unit dicts.

    ``to_image(value, field)`` turns a base64 image into the reference the canonical input
    takes (raising :class:`InvalidInput` naming ``field``); ``init_resize_mode`` is
    img2img's, used by units that take the init image; ``no_detectmap`` is the
    extension's option that keeps detected maps out of the answer. ``modules``: the
    preprocessors served (built-in ones only without it).
    """
    found = find_script(scripts)
    if found is None:
        return MappedUnits()
    key, entry = found
    prefix = f"alwayson_scripts.{key}.args"
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"alwayson_scripts.{key}", 'must be an object such as {"args": [...]}')
    args = entry.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise InvalidInput(prefix, "must be a list of ControlNet units")
    mapped = MappedUnits(key=key)
    for index, raw in enumerate(args):
        if raw is None:
            continue  # the extension skips empty slots
        where = f"{prefix}.{index}"
        if not isinstance(raw, Mapping):
            raise InvalidInput(where, "must be an object (a ControlNet unit)")
        try:
            unit = UnitArgs.model_validate(dict(raw))
        except ValidationError as exc:
            raise _unit_error(exc, where) from None
        if ip_adapter_module(unit.module) is not None:
            prompt = _image_prompt_values(unit, where, img2img=img2img, to_image=to_image)
            if prompt is None:
                continue
            if mapped.image_prompt_index is not None:
                raise InvalidInput(
                    f"{where}.module",
                    f"one IP-Adapter unit per request ({prefix}.{mapped.image_prompt_index} "
                    "is one already)",
                )
            mapped.image_prompt, mapped.image_prompt_index = prompt, index
            continue
        values = _unit_values(
            unit,
            where,
            img2img=img2img,
            init_resize_mode=init_resize_mode,
            to_image=to_image,
            modules=modules or AnnotatorCatalog(None),
        )
        if values is None:
            continue
        mapped.units.append(values)
        mapped.wire_index.append(index)
        preprocesses = values["preprocessor"] != NO_PREPROCESSOR
        if preprocesses and unit.save_detected_map is not False and not no_detectmap:
            mapped.wants_maps = True
    return mapped


def _unit_error(exc: ValidationError, where: str) -> InvalidInput:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"][:1])
    message = str(first["msg"]).removeprefix("Value error, ")
    return InvalidInput(f"{where}.{loc}" if loc else where, message)


def _unit_values(
    unit: UnitArgs,
    where: str,
    *,
    img2img: bool,
    init_resize_mode: int | None,
    to_image: Any,
    modules: AnnotatorCatalog,
) -> dict[str, Any] | None:
    """One unit's canonical values, or None for a unit that takes no part."""
    model = (unit.model or "").strip()
    if unit.enabled is False or not model or model.lower() == NO_MODEL.lower():
        return None
    module = _module(unit.module, f"{where}.module", modules)
    values: dict[str, Any] = {"model": model, "preprocessor": module}
    image, mask = _images(unit, where)
    if image is not None:
        values["image"] = to_image(image, f"{where}.image")
        values["resize_mode"] = resize_mode(unit.resize_mode, f"{where}.resize_mode")
    elif not img2img:
        raise InvalidInput(
            f"{where}.image", "needs a control image (txt2img has no init image to use)"
        )
    else:
        # the init image, fitted as img2img fits it (the extension does the same)
        values["resize_mode"] = resize_mode(init_resize_mode or 0, "resize_mode")
    if mask is not None:
        if image is None:
            raise InvalidInput(f"{where}.mask", "a unit mask needs the unit's own image")
        values["mask"] = to_image(mask, f"{where}.mask")
    if unit.weight is not None:
        values["conditioning_scale"] = unit.weight
    if unit.guidance_start is not None:
        values["start"] = unit.guidance_start
    end = unit.guidance_end if unit.guidance_end is not None else unit.guidance
    if end is not None:
        values["end"] = end
    values["control_mode"] = control_mode(unit.control_mode, f"{where}.control_mode")
    values["hires_fix"] = hires_fix(unit.hr_option, f"{where}.hr_option")
    values["pixel_perfect"] = bool(unit.pixel_perfect)
    res = unit.processor_res
    if res is not None and PROCESSOR_RES[0] <= res <= PROCESSOR_RES[1]:
        values["processor_res"] = int(res)
    if module != NO_PREPROCESSOR:
        values.update(thresholds(module, unit.threshold_a, unit.threshold_b))
    return values


def _image_prompt_values(
    unit: UnitArgs, where: str, *, img2img: bool, to_image: Any
) -> dict[str, Any] | None:
    """An IP-Adapter unit's canonical image prompt values, or None for a unit that takes
    no part; without ``ip_adapter_image`` when an img2img unit takes the init image."""
    model = (unit.model or "").strip()
    if unit.enabled is False or not model or model.lower() == NO_MODEL.lower():
        return None
    image, mask = _images(unit, where)
    if mask is not None:
        raise InvalidInput(
            f"{where}.mask", "an IP-Adapter unit takes no mask here (its image prompt is global)"
        )
    end = unit.guidance_end if unit.guidance_end is not None else unit.guidance
    if unit.guidance_start not in (None, 0):
        raise InvalidInput(
            f"{where}.guidance_start", "an IP-Adapter unit steers every step here: send 0"
        )
    if end not in (None, 1):
        field_name = "guidance_end" if unit.guidance_end is not None else "guidance"
        raise InvalidInput(
            f"{where}.{field_name}", "an IP-Adapter unit steers every step here: send 1"
        )
    values: dict[str, Any] = {"ip_adapter": title_name(model)}
    if image is not None:
        values["ip_adapter_image"] = to_image(image, f"{where}.image")
    elif not img2img:
        raise InvalidInput(
            f"{where}.image", "needs an image prompt (txt2img has no init image to use)"
        )
    if unit.weight is not None:
        values["ip_adapter_scale"] = unit.weight
    return values


def ip_adapter_module(value: str | None) -> str | None:
    """The extension's IP-Adapter module ``value`` names (any case, the UI labels too), or
    None when it names none."""
    return _IP_ADAPTER_BY_NAME.get((value or "").strip().lower())


def _images(unit: UnitArgs, where: str) -> tuple[str | None, str | None]:
    """The unit's image and mask from any of the extension's shapes ("" = none)."""
    image: Any = unit.image if unit.image is not None else unit.input_image
    mask: Any = unit.mask if unit.mask is not None else unit.mask_image
    if isinstance(image, list):
        if len(image) == 1 and isinstance(image[0], dict):
            image = image[0]
        elif len(image) == 2 and all(isinstance(part, str | None) for part in image):
            image, mask = image[0], image[1] if image[1] is not None else mask
        else:
            raise InvalidInput(
                f"{where}.image", "one image per unit: base64, {image, mask} or [image, mask]"
            )
    if isinstance(image, dict):
        inner_mask = image.get("mask")
        image = image.get("image")
        if inner_mask is not None:
            mask = inner_mask
    for value, name in ((image, "image"), (mask, "mask")):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{where}.{name}", "must be base64 image data or a data: URI")
    return (image or None), (mask or None)


def _module(value: str | None, where: str, modules: AnnotatorCatalog) -> str:
    """The preprocessor a ``module`` names (any case, the UI aliases too) among those
    ``modules`` serves; an unknown one, or one whose weights are absent, is refused."""
    name = (value or NO_PREPROCESSOR).strip().lower()
    name = _BY_ALIAS.get(name, name)
    if name == NO_PREPROCESSOR:
        return NO_PREPROCESSOR
    served = {key.lower(): key for key in modules.modules()}
    if name not in served:
        # the catalog's own refusal: unknown, or where the weights go
        modules.get(name, field=where)
        raise InvalidInput(where, f"unknown module {value!r}", allowed=module_names())
    return served[name]


def resize_mode(value: str | int | None, where: str) -> str:
    """The canonical resize mode of the extension's text or number."""
    if value is None:
        return "crop_and_resize"
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(RESIZE_NUMBERS):
            return RESIZE_NUMBERS[value]
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return resize_mode(int(text), where)
        found = RESIZE_MODES.get(text) or (text if text in RESIZE_NUMBERS else None)
        if found is not None:
            return found
    raise InvalidInput(
        where,
        f"unknown resize mode {value!r}",
        allowed=["Just Resize", "Crop and Resize", "Resize and Fill", "0", "1", "2"],
    )


def control_mode(value: str | int | None, where: str) -> str:
    """The canonical control mode of the extension's text or number."""
    if value is None:
        return "balanced"
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(CONTROL_NUMBERS):
            return CONTROL_NUMBERS[value]
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return control_mode(int(text), where)
        if text in CONTROL_MODES:
            return CONTROL_MODES[text]
    raise InvalidInput(
        where,
        f"unknown control mode {value!r}",
        allowed=[
            "Balanced",
            "My prompt is more important",
            "ControlNet is more important",
            "0",
            "1",
            "2",
        ],
    )


#: The extension's ``hr_option`` values, in its order (0, 1, 2) → the canonical ``hires_fix``.
HR_OPTIONS = {"both": "both", "low res only": "low_res_only", "high res only": "high_res_only"}


def hires_fix(value: str | int | None, where: str) -> str:
    """The canonical ``hires_fix`` of the extension's ``hr_option`` text or number."""
    if value is None:
        return "both"
    names = list(HR_OPTIONS.values())
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return names[value]
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return hires_fix(int(text), where)
        found = HR_OPTIONS.get(text) or (text if text in names else None)
        if found is not None:
            return found
    raise InvalidInput(
        where,
        f"unknown hires fix option {value!r}",
        allowed=["Both", "Low res only", "High res only", "0", "1", "2"],
    )


def thresholds(module: str, a: float | None, b: float | None) -> dict[str, float]:
    """``threshold_a``/``threshold_b`` the module uses: values inside its sliders; the
    rest (-1, the 64 sent for sliders a module lacks) mean its defaults (left out)."""
    chosen: dict[str, float] = {}
    preprocessor = known(module)
    assert preprocessor is not None  # _module returned it
    for name, value in (("threshold_a", a), ("threshold_b", b)):
        slider = getattr(preprocessor, name)
        if slider is not None and value is not None and slider.minimum <= value <= slider.maximum:
            chosen[name] = value
    return chosen


# -- listings -------------------------------------------------------------------------------


def module_names(
    *, alias_names: bool = False, modules: AnnotatorCatalog | None = None
) -> list[str]:
    """``/controlnet/module_list``'s names: ``none`` first, then the preprocessors (the
    built-in ones, then the annotators ``modules`` has present), then the IP-Adapter
    modules."""
    served = (modules or AnnotatorCatalog(None)).modules()
    names = [
        NO_PREPROCESSOR,
        *(n for n in served if n != NO_PREPROCESSOR),
        *IP_ADAPTER_MODULES,
    ]
    return [_label(n) for n in names] if alias_names else names


def _label(name: str) -> str:
    return MODULE_ALIASES.get(name) or IP_ADAPTER_MODULES.get(name) or name


def render_module_list(
    *, alias_names: bool = False, modules: AnnotatorCatalog | None = None
) -> dict[str, Any]:
    """``/controlnet/module_list``: the names and each one's sliders (IP-Adapter modules
    have none); the annotators only where ``modules`` has them present."""
    modules = modules or AnnotatorCatalog(None)
    detail = {NO_PREPROCESSOR: {"model_free": False, "sliders": []}}
    detail.update(modules.module_detail())
    detail.update({name: {"model_free": False, "sliders": []} for name in IP_ADAPTER_MODULES})
    if alias_names:
        detail = {_label(name): value for name, value in detail.items()}
    names = module_names(alias_names=alias_names, modules=modules)
    return {"module_list": names, "module_detail": detail}


def render_control_types(
    controlnets: Sequence[ControlNetSpec],
    ip_adapters: Sequence[IpAdapterSpec] = (),
    modules: AnnotatorCatalog | None = None,
) -> dict[str, Any]:
    """``/controlnet/control_types``: for every control type a served ControlNet or a
    preprocessor has, its modules, its models and the defaults the extension's UI picks;
    ``IP-Adapter`` with its modules and the served IP-Adapters; ``All`` lists everything.
    The preprocessors are the built-in ones and the annotators ``modules`` has present."""
    modules = modules or AnnotatorCatalog(None)
    served = modules.modules()
    titles = [spec.title for spec in controlnets] + [spec.title for spec in ip_adapters]
    types: dict[str, Any] = {
        "All": {
            "module_list": module_names(modules=modules),
            "model_list": [NO_MODEL, *titles],
            "default_option": NO_PREPROCESSOR,
            "default_model": NO_MODEL,
        }
    }
    kinds = {spec.control_type for spec in controlnets if spec.control_type}
    kinds |= {p.control_type for p in served.values()}
    for kind in sorted(kinds, key=lambda k: CONTROL_TYPE_TAGS.get(k, k)):
        names = [n for n, p in served.items() if p.control_type == kind]
        models = [spec.title for spec in controlnets if spec.takes(kind)]
        default = modules.default_for(kind) or (names[0] if names else NO_PREPROCESSOR)
        types[CONTROL_TYPE_TAGS.get(kind, kind)] = {
            "module_list": [NO_PREPROCESSOR, *names],
            "model_list": [NO_MODEL, *models],
            "default_option": default,
            "default_model": models[0] if models else NO_MODEL,
        }
    adapters = [spec.title for spec in ip_adapters]
    types[IP_ADAPTER_TAG] = {
        "module_list": [NO_PREPROCESSOR, *IP_ADAPTER_MODULES],
        "model_list": [NO_MODEL, *adapters],
        "default_option": next(iter(IP_ADAPTER_MODULES)),
        "default_model": adapters[0] if adapters else NO_MODEL,
    }
    return {"control_types": types}


class DetectRequest(BaseModel):
    """``POST /controlnet/detect``; ``webuiapi`` sends the images as ``controlnet_images``,
    the extension reads ``controlnet_input_images``: both are accepted."""

    model_config = ConfigDict(extra="allow")

    controlnet_module: str = NO_PREPROCESSOR
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)
    controlnet_masks: list[str] = Field(default_factory=list)
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False

    def images(self) -> tuple[str, list[str]]:
        """The field the images came in and the images."""
        if self.controlnet_input_images:
            return "controlnet_input_images", self.controlnet_input_images
        return "controlnet_images", self.controlnet_images


@dataclass(frozen=True)
class DetectPlan:
    """What one detect call runs: the module and its settings (None = default)."""

    module: str
    resolution: int
    threshold_a: float | None
    threshold_b: float | None


def detect_plan(body: DetectRequest, modules: AnnotatorCatalog | None = None) -> DetectPlan:
    """The checked settings of a detect call (422 naming the field at fault). An
    IP-Adapter module is refused: it makes image embeddings, not a map to preview (the
    extension refuses ``ip-adapter-auto`` and answers the others with a torch tensor)."""
    if ip_adapter_module(body.controlnet_module) is not None:
        raise InvalidInput(
            "controlnet_module",
            f"{body.controlnet_module} reads the image for an IP-Adapter and makes no map: "
            "nothing to preview; send the image itself as the unit's image",
        )
    modules = modules or AnnotatorCatalog(None)
    module = _module(body.controlnet_module, "controlnet_module", modules)
    field_name, images = body.images()
    if not images:
        raise InvalidInput("controlnet_input_images", "no image to detect (send one or more)")
    if body.controlnet_masks and len(body.controlnet_masks) != len(images):
        raise InvalidInput(
            "controlnet_masks", f"needs one mask per image ({len(images)} in {field_name})"
        )
    res = body.controlnet_processor_res
    resolution = int(res) if PROCESSOR_RES[0] <= res <= PROCESSOR_RES[1] else 512
    chosen: dict[str, float] = {}
    if module != NO_PREPROCESSOR:
        chosen = thresholds(module, body.controlnet_threshold_a, body.controlnet_threshold_b)
    return DetectPlan(module, resolution, chosen.get("threshold_a"), chosen.get("threshold_b"))


__all__ = [
    "API_VERSION",
    "IP_ADAPTER_MODULES",
    "IP_ADAPTER_TAG",
    "SCRIPT_NAMES",
    "DetectPlan",
    "DetectRequest",
    "MappedUnits",
    "UnitArgs",
    "control_mode",
    "detect_plan",
    "find_script",
    "hires_fix",
    "ip_adapter_module",
    "map_units",
    "module_names",
    "render_control_types",
    "render_module_list",
    "resize_mode",
    "thresholds",
]
