"""HED soft edges and the lineart generator, sdserve's own annotator networks: their
parameters are named and shaped as in lllyasviel/Annotators' checkpoints, so a converted
checkpoint loads strictly through the engine; the maps are A1111's (HED grey, "safe"
quantised to three levels, lineart white lines on black) at the working size; a
ControlNet unit runs softedge_hed through the engine. Weights are random, saved as
``model.safetensors`` in the folder layout an operator uses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdserve.domain.inputs import GenerationInput
from sdserve.engine.annotator_networks import HedNetwork, LineartGenerator
from sdserve.engine.annotators import AnnotatorModels, ControlMaps, lineart_map, soft_edges
from sdserve.engine.engine import Engine
from sdserve.errors import ModelLoadError
from sdserve.models.catalog import ModelRegistry
from sdserve.models.controlnet.annotators import AnnotatorCatalog
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.results import UnitImages
from sdserve.models.settings import EngineSettings


def conv(out: int, into: int, side: int) -> dict[str, tuple[int, ...]]:
    return {"weight": (out, into, side, side), "bias": (out,)}


def hed_checkpoint() -> dict[str, tuple[int, ...]]:
    """ControlNetHED.pth's parameters: name -> shape."""
    shapes: dict[str, tuple[int, ...]] = {"norm": (1, 3, 1, 1)}
    into = 3
    for block, (width, layers) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for layer in range(layers):
            for key, shape in conv(width, into if layer == 0 else width, 3).items():
                shapes[f"block{block + 1}.convs.{layer}.{key}"] = shape
        for key, shape in conv(1, width, 1).items():
            shapes[f"block{block + 1}.projection.{key}"] = shape
        into = width
    return shapes


def lineart_checkpoint() -> dict[str, tuple[int, ...]]:
    """sk_model.pth's (and sk_model2.pth's) parameters: name -> shape."""
    layers = {"model0.1": conv(64, 3, 7), "model1.0": conv(128, 64, 3)}
    layers["model1.3"] = conv(256, 128, 3)
    for block in range(3):
        layers[f"model2.{block}.conv_block.1"] = conv(256, 256, 3)
        layers[f"model2.{block}.conv_block.5"] = conv(256, 256, 3)
    # transposed convolutions: (in, out, k, k)
    layers["model3.0"] = {"weight": (256, 128, 3, 3), "bias": (128,)}
    layers["model3.3"] = {"weight": (128, 64, 3, 3), "bias": (64,)}
    layers["model4.1"] = conv(1, 64, 7)
    return {f"{name}.{key}": shape for name, keys in layers.items() for key, shape in keys.items()}


def network_folder(
    folder: Path, model_type: str, state: dict[str, torch.Tensor], *, name: str = "model"
) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    save_file(
        {key: value.contiguous() for key, value in state.items()},
        str(folder / f"{name}.safetensors"),
    )
    return folder


def random_state(kind: type[torch.nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """Random weights (torch's initialisation) under the network's parameter names."""
    torch.manual_seed(seed)
    return dict(kind().state_dict())


@pytest.fixture(scope="module")
def annotators(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HED (random), lineart (its head drawing blank white paper) and lineart_coarse
    (random) folders, as an operator lays them out."""
    folder = tmp_path_factory.mktemp("network-annotators")
    hed = random_state(HedNetwork, 0)
    hed["norm"] = torch.tensor([122.7, 116.7, 104.0]).reshape(1, 3, 1, 1)
    network_folder(folder / "hed", "hed", hed)
    blank = random_state(LineartGenerator, 1)
    blank["model4.1.weight"] = torch.zeros_like(blank["model4.1.weight"])
    blank["model4.1.bias"] = torch.full_like(blank["model4.1.bias"], 40.0)
    network_folder(folder / "lineart", "lineart", blank)
    network_folder(folder / "lineart-coarse", "lineart_coarse", random_state(LineartGenerator, 2))
    return folder


@pytest.fixture(scope="module")
def maps(annotators: Path) -> ControlMaps:
    models = AnnotatorModels(device="cpu", dtype=torch.float16, max_loaded=3)
    return ControlMaps(AnnotatorCatalog(annotators), models)


def photo(size: tuple[int, int] = (120, 80)) -> Image.Image:
    pixels = np.full((size[1], size[0], 3), 30, np.uint8)
    pixels[20:60, 30:90] = 220  # a bright box: edges to find
    return Image.fromarray(pixels)


def run(maps: ControlMaps, name: str, **options: object) -> np.ndarray:
    settings: dict[str, object] = {"resolution": 64, "threshold_a": None, "threshold_b": None}
    settings.update(options)
    return np.asarray(maps.detect(name, photo(), **settings))  # type: ignore[arg-type]


def test_the_networks_have_the_checkpoints_parameter_names_and_shapes() -> None:
    for network, checkpoint in (
        (HedNetwork(), hed_checkpoint()),
        (LineartGenerator(), lineart_checkpoint()),
    ):
        assert {k: tuple(v.shape) for k, v in network.state_dict().items()} == checkpoint


def test_a_checkpoint_state_dict_loads_strictly_through_the_engine(annotators: Path) -> None:
    models = AnnotatorModels(device="cpu", dtype=torch.float16)
    catalog = AnnotatorCatalog(annotators)
    for name, kind, checkpoint in (
        ("softedge_hed", HedNetwork, hed_checkpoint()),
        ("lineart_coarse", LineartGenerator, lineart_checkpoint()),
    ):
        annotator = catalog.annotator(name)
        assert annotator is not None
        model = models.get(annotator).model
        assert isinstance(model, kind) and not model.training
        assert next(model.parameters()).dtype == torch.float32  # float32 whatever the engine's
        assert set(model.state_dict()) == set(checkpoint)
    assert models.get(catalog.annotator("softedge_hedsafe")) is models.get(  # type: ignore[arg-type]
        catalog.annotator("softedge_hed")  # type: ignore[arg-type]
    )
    assert models.loads == 2  # one HED folder serves both its modules


def test_weights_of_another_network_fail_naming_the_folder(tmp_path: Path) -> None:
    network_folder(tmp_path / "not-hed", "hed", random_state(LineartGenerator, 0))
    annotator = AnnotatorCatalog(tmp_path).annotator("softedge_hed")
    assert annotator is not None
    with pytest.raises(ModelLoadError, match=r"not-hed: model\.safetensors is not a hed"):
        AnnotatorModels(device="cpu", dtype=torch.float32).get(annotator)


def test_hed_edges_are_grey_0_255_at_the_working_size(maps: ControlMaps) -> None:
    edges = run(maps, "softedge_hed")
    assert edges.shape == (64, 96, 3) and edges.dtype == np.uint8
    assert np.array_equal(edges[:, :, 0], edges[:, :, 2])
    assert len(np.unique(edges)) > 3  # soft: many levels
    assert run(maps, "softedge_hed", pixel_perfect_size=(240, 160)).shape == (160, 240, 3)
    assert np.array_equal(run(maps, "hed"), edges)  # the older name, the same map


def test_hedsafe_quantises_the_edges_to_three_levels(maps: ControlMaps) -> None:
    safe = run(maps, "softedge_hedsafe")
    assert safe.shape == (64, 96, 3)
    assert set(np.unique(safe).tolist()) <= {0, 127, 255}
    logits = np.array([[-40.0, -0.1, 0.0], [0.6, 0.8, 40.0]], np.float32)
    assert soft_edges(logits).tolist() == [[0, 121, 127], [164, 175, 255]]
    assert soft_edges(logits, safe=True).tolist() == [[0, 127, 127], [127, 255, 255]]


def test_lineart_is_white_lines_on_black(maps: ControlMaps) -> None:
    # the lineart folder's generator draws blank white paper: no line anywhere
    assert (run(maps, "lineart_realistic") == 0).all()
    coarse = run(maps, "lineart_coarse", resolution=63)  # sides the generator does not keep
    assert coarse.shape == (63, 94, 3) and np.array_equal(coarse[:, :, 0], coarse[:, :, 1])
    drawing = np.ones((4, 4), np.float32)
    drawing[1] = 0.0  # a dark line on white
    assert lineart_map(drawing)[:, 0].tolist() == [0, 255, 0, 0]


@pytest.fixture(scope="module")
def engine(tiny_sd: Path, tiny_controlnets: Path, annotators: Path) -> Engine:
    return Engine(
        EngineSettings(device="cpu", watermark=False),
        ModelRegistry.from_references([str(tiny_sd)]),
        controlnets=ControlNetCatalog(tiny_controlnets),
        annotators=AnnotatorCatalog(annotators),
    )


def generate(engine: Engine, preprocessor: str, picture: Image.Image) -> Any:
    model = engine.registry.specs()[0].name
    unit = {
        "model": "tiny-sd-scribble",
        "image": "data:image/png;base64,AAAA",  # never fetched: the engine gets the image
        "preprocessor": preprocessor,
        "conditioning_scale": 1.5,
        "processor_res": 64,
    }
    inp = GenerationInput.model_validate(
        {
            "prompt": "a photo of a red fox",
            "num_inference_steps": 3,
            "scheduler": "K_EULER",
            "seed": 5,
            "width": 64,
            "height": 64,
            "apply_watermark": False,
            "disable_safety_checker": True,
            "controlnets": [unit],
            "return_control_maps": True,
        }
    )
    return engine.generate(inp, model=model, controls=[UnitImages(image=picture)])


def test_a_controlnet_unit_runs_softedge_hed_through_the_engine(engine: Engine) -> None:
    picture = photo((64, 64))
    hed, given = generate(engine, "softedge_hed", picture), generate(engine, "none", picture)
    assert len(hed.images) == 2
    edges = np.asarray(Image.open(io.BytesIO(hed.images[1].data)).convert("RGB"))
    assert edges.shape == (64, 64, 3) and np.array_equal(edges[:, :, 0], edges[:, :, 1])
    assert not np.array_equal(edges, np.asarray(picture))
    # the ControlNet saw the edges, not the photo
    first = np.asarray(Image.open(io.BytesIO(hed.images[0].data)))
    assert not np.array_equal(first, np.asarray(Image.open(io.BytesIO(given.images[0].data))))
