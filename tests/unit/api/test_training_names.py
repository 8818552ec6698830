"""Names are owned: a training never replaces a LoRA or a model it did not create.

The server used to accept destination ``evil/tiny-style`` and overwrite the operator's
``tiny-style.safetensors``; now the training is refused at create (409 naming the
destination, no job) and the file keeps its bytes.
"""

from __future__ import annotations

from pathlib import Path

from sdserve.models.catalog import ModelSpec
from sdserve.training.catalog import TrainedModels
from tests.unit.api.conftest import MODEL, TOKEN, MakeApp

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = ModelSpec(
    name="sdserve/tiny-sd",
    reference="/models/tiny-sd",
    family="sd1",
    inpainting=False,
    refiner=None,
    version="b" * 64,
    native_size=64,
)


def _train(app, destination: str):  # type: ignore[no-untyped-def]
    version = app.service.model(MODEL).version
    return app.client.post(
        f"/v1/models/{MODEL}/versions/{version}/trainings",
        json={"input": {"input_images": "https://example.com/i.zip"}, "destination": destination},
        headers=AUTH,
    )


def test_a_destination_named_like_an_operator_lora_is_refused(
    make_app: MakeApp, tmp_path: Path
) -> None:
    app = make_app(tokens=[TOKEN])
    operator = tmp_path / "loras" / "tiny-style.safetensors"
    operator.parent.mkdir(parents=True, exist_ok=True)
    operator.write_bytes(b"the operator's weights")
    response = _train(app, "evil/tiny-style")
    assert response.status_code == 409, response.text
    assert "destination evil/tiny-style" in response.text
    assert operator.read_bytes() == b"the operator's weights"
    assert len(app.service.list().results) == 0


def test_a_name_another_destination_published_is_refused_its_own_gets_a_version(
    make_app: MakeApp, tmp_path: Path
) -> None:
    app = make_app(tokens=[TOKEN])
    lora = tmp_path / "work.safetensors"
    lora.write_bytes(b"a's weights")
    TrainedModels(tmp_path / "trained", lora_dir=tmp_path / "loras").publish(
        "a/x", BASE, lora, training_id="t1"
    )
    refused = _train(app, "b/x")
    assert refused.status_code == 409, refused.text
    assert "belongs to a/x" in refused.text
    assert _train(app, "a/x").status_code == 201  # a new version of a/x, as on Replicate
    assert (tmp_path / "loras" / "x.safetensors").read_bytes() == b"a's weights"


def test_a_served_model_is_not_a_destination(make_app: MakeApp) -> None:
    app = make_app(tokens=[TOKEN])
    response = _train(app, MODEL)
    assert response.status_code == 409, response.text
    assert f"destination {MODEL} is a served" in response.text
