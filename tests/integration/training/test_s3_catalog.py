"""The trained-model catalog in a real S3 endpoint (moto's server over HTTP), as processes
on different machines see it: each has its own data folder and registry and shares only
the bucket. Publishing, the bucket's layout, the name rules (racing claims included), a
new name found without a listing, and the checks a worker makes on what it downloads."""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import threading
from pathlib import Path

import pytest

from sdserve.errors import Conflict, ModelLoadError, ModelNotFound
from sdserve.jobs.s3_files import S3Objects
from sdserve.models.catalog import ModelRegistry, ModelSpec
from sdserve.training.shared_catalog import MODELS_FOLDER, SharedTrainedModels
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 (the fixture)


def base_model_on(machine: str) -> ModelSpec:
    """tiny-sd as machine ``machine`` has it: its own folder and file hashes."""
    return ModelSpec(
        name="sdserve/tiny-sd",
        reference=f"/machine-{machine}/tiny-sd",
        family="sd1",
        inpainting=False,
        refiner=None,
        version=machine * 64,
        native_size=64,
    )


BASE = base_model_on("b")
#: The same base model as another machine has it: its own folder.
BASE_ON_C = base_model_on("c")
PREFIX = "cluster"


def safetensors_bytes(payload: bytes) -> bytes:
    """A minimal valid ``.safetensors`` file: a JSON header and one uint8 tensor."""
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + payload


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.make_bucket(f"models-{secrets.token_hex(4)}")


class Machine:
    """One process of the cluster: its data folder, registry and catalog."""

    def __init__(self, folder: Path, endpoint: S3Endpoint, bucket: str, base: ModelSpec) -> None:
        self.folder = folder
        objects = S3Objects.from_url(
            f"s3://{bucket}/{PREFIX}", MODELS_FOLDER, endpoint_url=endpoint.url
        )
        self.catalog = SharedTrainedModels(
            objects, folder / "trained-cache", lora_dir=folder / "loras"
        )
        self.registry = ModelRegistry([base])

    def lora(self, payload: bytes) -> Path:
        path = self.folder / f"work-{secrets.token_hex(4)}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(safetensors_bytes(payload))
        return path


@pytest.fixture
def machines(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> tuple[Machine, Machine]:
    b = Machine(tmp_path / "b", s3_endpoint, bucket, BASE)
    c = Machine(tmp_path / "c", s3_endpoint, bucket, BASE_ON_C)
    c.catalog.attach(c.registry, downloads=True)
    return b, c


def test_a_model_published_on_one_machine_is_served_and_fetched_on_another(
    machines: tuple[Machine, Machine],
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    b, c = machines
    assert c.catalog.register(c.registry) == []  # C starts: nothing trained yet
    lora = b.lora(b"first")
    published = b.catalog.publish("me/my-dog", BASE, lora, training_id="t1")

    short = published.version[:16]
    assert sorted(s3_endpoint.keys(bucket)) == [
        f"{PREFIX}/models/names/my-dog",
        f"{PREFIX}/models/trained/me/my-dog/lora-{short}.safetensors",
        f"{PREFIX}/models/trained/me/my-dog/model.json",
    ]
    manifest = json.loads(
        s3_endpoint.client()
        .get_object(Bucket=bucket, Key=f"{PREFIX}/models/trained/me/my-dog/model.json")["Body"]
        .read()
    )
    assert manifest["lora_sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert "lora" not in manifest  # a path of machine B means nothing elsewhere
    # B keeps its copy: it downloads nothing
    assert Path(published.lora).read_bytes() == lora.read_bytes()

    # C was asked within the listing interval: the name is looked up by itself
    spec = c.registry.resolve("me/my-dog")
    assert spec.version == published.version
    assert (spec.reference, spec.native_size) == (BASE_ON_C.reference, 64)  # C's own base
    assert spec.lora is not None and not Path(spec.lora).exists()  # listed, not fetched
    c.registry.prepare(spec)  # a job uses it
    assert Path(spec.lora).read_bytes() == lora.read_bytes()
    assert Path(spec.lora).is_relative_to(c.folder / "trained-cache")
    assert not (c.folder / "loras").exists()  # the operator's LoRA folder is left alone


def test_a_new_version_reaches_the_other_machine_by_its_version_id(
    machines: tuple[Machine, Machine],
) -> None:
    b, c = machines
    first = b.catalog.publish("me/cat", BASE, b.lora(b"one"), training_id="t1")
    assert c.registry.resolve("me/cat").version == first.version
    second = b.catalog.publish("me/cat", BASE, b.lora(b"two"), training_id="t2")
    c.registry.prepare(c.registry.resolve("me/cat"))
    spec = c.registry.resolve(f"me/cat:{second.version}")
    c.registry.prepare(spec)
    assert spec.lora is not None and Path(spec.lora).read_bytes().endswith(b"two")
    cached = list((c.folder / "trained-cache").rglob("*.safetensors"))
    assert cached == [Path(spec.lora)]  # the old version's copy is gone


def test_a_fresh_process_lists_every_model_at_start(
    machines: tuple[Machine, Machine],
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: Path,
) -> None:
    b, _ = machines
    b.catalog.publish("me/a", BASE, b.lora(b"a"), training_id="t1")
    b.catalog.publish("you/b", BASE, b.lora(b"b"), training_id="t2")
    api = Machine(tmp_path / "api", s3_endpoint, bucket, BASE_ON_C)
    assert sorted(api.catalog.register(api.registry)) == ["me/a", "you/b"]
    assert api.catalog.register(api.registry) == []  # within the interval: no request


def test_a_model_whose_base_is_not_served_here_is_not_served(
    machines: tuple[Machine, Machine],
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: Path,
) -> None:
    b, _ = machines
    b.catalog.publish("me/dog", BASE, b.lora(b"dog"), training_id="t1")
    other = Machine(tmp_path / "xl", s3_endpoint, bucket, BASE)
    other.registry = ModelRegistry([ModelSpec("sdserve/tiny-sdxl", "/x", "sdxl", False, None, "x")])
    other.catalog.attach(other.registry, downloads=True)
    with pytest.raises(ModelNotFound, match="me/dog"):
        other.registry.resolve("me/dog")


def test_two_trainings_racing_for_one_name_on_two_machines_one_wins(
    machines: tuple[Machine, Machine],
) -> None:
    b, c = machines
    b.catalog.check_owner("a/x")
    c.catalog.check_owner("b/x")  # both created before either published
    results: dict[str, str] = {}
    start = threading.Barrier(2)

    def publish(machine: Machine, destination: str) -> None:
        start.wait()
        try:
            machine.catalog.publish(destination, BASE, machine.lora(b"x"), training_id="t")
            results[destination] = "published"
        except Conflict as exc:
            results[destination] = exc.message

    threads = [
        threading.Thread(target=publish, args=(b, "a/x")),
        threading.Thread(target=publish, args=(c, "b/x")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winner = next(name for name, outcome in results.items() if outcome == "published")
    loser = "b/x" if winner == "a/x" else "a/x"
    assert results[loser] == (
        f"destination {loser}: the LoRA name 'x' belongs to {winner}; choose another name"
    )
    # the loser's next training is refused when it is created (409), on any machine
    for machine in machines:
        with pytest.raises(Conflict, match=f"belongs to {winner}"):
            machine.catalog.check_owner(loser)
        machine.catalog.check_owner(winner)  # its own name: a new version is fine
    assert not b.catalog.exists(loser) and b.catalog.exists(winner)


def test_the_name_of_an_operator_lora_is_refused(machines: tuple[Machine, Machine]) -> None:
    b, _ = machines
    (b.folder / "loras").mkdir(parents=True)
    (b.folder / "loras" / "house-style.safetensors").write_bytes(b"operator")
    with pytest.raises(Conflict, match="operator's LoRA 'house-style'"):
        b.catalog.publish("evil/house-style", BASE, b.lora(b"evil"), training_id="t1")
    assert b.catalog.owner_of("house-style") is None
    assert (b.folder / "loras" / "house-style.safetensors").read_bytes() == b"operator"


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        (safetensors_bytes(b"other"), "does not have the sha256 its manifest gives"),
        (b"\x00" * 7, "has 7 bytes in the bucket"),
    ],
)
def test_a_lora_changed_in_the_bucket_is_refused_and_not_kept(
    machines: tuple[Machine, Machine],
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    replacement: bytes,
    problem: str,
) -> None:
    b, c = machines
    published = b.catalog.publish("me/dog", BASE, b.lora(b"right"), training_id="t1")
    key = f"{PREFIX}/models/trained/me/dog/lora-{published.version[:16]}.safetensors"
    s3_endpoint.client().put_object(Bucket=bucket, Key=key, Body=replacement)
    spec = c.registry.resolve("me/dog")
    with pytest.raises(ModelLoadError, match=f"the LoRA of model me/dog {problem}"):
        c.registry.prepare(spec)
    assert [path for path in (c.folder / "trained-cache").rglob("*") if path.is_file()] == []


def test_a_manifest_pointing_outside_its_folder_is_ignored(
    machines: tuple[Machine, Machine],
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    b, c = machines
    b.catalog.publish("me/dog", BASE, b.lora(b"dog"), training_id="t1")
    key = f"{PREFIX}/models/trained/me/dog/model.json"
    manifest = json.loads(s3_endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["lora_key"] = "trained/you/cat/lora-0123456789abcdef.safetensors"
    s3_endpoint.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    with pytest.raises(ModelNotFound):
        c.registry.resolve("me/dog")


def test_a_lora_that_is_not_safetensors_is_never_used(machines: tuple[Machine, Machine]) -> None:
    b, c = machines
    pickled = b.folder / "evil.safetensors"
    pickled.parent.mkdir(parents=True, exist_ok=True)
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)  # a pickle, named .safetensors
    b.catalog.publish("me/evil", BASE, pickled, training_id="t1")
    with pytest.raises(ModelLoadError, match=r"the LoRA of model me/evil is not a \.safetensors"):
        c.registry.prepare(c.registry.resolve("me/evil"))
