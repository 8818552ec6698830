"""The official ``replicate`` client against a real ``sdserve serve --demo`` process."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.stream import ServerSentEvent
from replicate.webhook import InvalidSignatureError

from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.receiver import WebhookReceiver

MODEL = "sdserve/tiny-sd"
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture
def client(server: ServerProcess) -> replicate.Client:
    # the server has no tokens (loopback only): any token is accepted
    return replicate.Client(api_token="anything", base_url=server.url)


def png_pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def max_level_difference(a: bytes, b: bytes) -> int:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def sample_png(tmp_path: Path, color: tuple[int, int, int] = (200, 40, 40)) -> Path:
    path = tmp_path / "input.png"
    Image.new("RGB", (64, 64), color).save(path)
    return path


def half_mask(tmp_path: Path) -> Path:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half white = repaint
    path = tmp_path / "mask.png"
    mask.save(path)
    return path


def test_run_waits_and_returns_readable_images(client: replicate.Client) -> None:
    output = client.run(MODEL, input={"prompt": "a red fox", "num_outputs": 2, "seed": 1, **FAST})
    assert isinstance(output, list) and len(output) == 2
    for item in output:
        data = item.read()
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (64, 64)
            assert image.format == "PNG"
            assert "Seed: " in image.info["parameters"]


def test_run_gives_readable_images_when_the_job_outlasts_the_wait(
    client: replicate.Client, server: ServerProcess
) -> None:
    # queued behind a long job, a prediction outlasts a one-second wait on any machine
    blocker = client.models.predictions.create(
        model=MODEL,
        input={"prompt": "blocker", "width": 256, "height": 256, "num_inference_steps": 500},
    )
    answers: list[tuple[str, int, str]] = []  # (method, HTTP status, prediction status)

    def record(response: httpx.Response) -> None:
        response.read()
        answers.append(
            (response.request.method, response.status_code, response.json().get("status"))
        )

    watched = replicate.Client(
        api_token="anything", base_url=server.url, event_hooks={"response": [record]}
    )
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["output"] = watched.run(
                MODEL, input={"prompt": "a red fox", "num_outputs": 2, "seed": 1, **FAST}, wait=1
            )
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not answers and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        blocker.cancel()
    runner.join(timeout=240)
    assert "error" not in result, result
    # the wait expired ("starting"), so run() polled GET until the job ended
    assert answers[0] == ("POST", 201, "starting")
    assert answers[-1] == ("GET", 200, "succeeded")
    images = result["output"]
    assert len(images) == 2
    for image in images:
        assert isinstance(image, FileOutput)
        assert image.url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(image.read())) as png:
            assert png.format == "PNG" and png.size == (64, 64)


def test_async_create_and_poll(client: replicate.Client, server: ServerProcess) -> None:
    model = client.models.get(MODEL)
    version = model.latest_version
    assert version is not None
    prediction = client.predictions.create(
        version=version.id, input={"prompt": "a cat", "seed": 3, **FAST}
    )
    assert prediction.status in ("starting", "processing")
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert isinstance(prediction.output, list) and len(prediction.output) == 1
    url = prediction.output[0]
    assert url.startswith(server.url)
    # output URLs are fetchable without the Authorization header
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0
    assert "seed" in (prediction.logs or "").lower()
    assert prediction.progress is not None and prediction.progress.percentage == 1.0


def test_same_seed_same_pixels_and_seed_plus_index(client: replicate.Client) -> None:
    pair = client.run(MODEL, input={"prompt": "snow", "seed": 41, "num_outputs": 2, **FAST})
    again = client.run(MODEL, input={"prompt": "snow", "seed": 41, "num_outputs": 2, **FAST})
    alone = client.run(MODEL, input={"prompt": "snow", "seed": 42, **FAST})
    first, second = (png_pixels(item.read()) for item in pair)
    # the same request twice: identical pixels
    assert [png_pixels(item.read()) for item in again] == [first, second]
    # image 1 alone with seed + 1: the same image; a batched forward rounds differently
    # from a single one, so a pixel may differ by a level or two, never more
    alone_pixels = png_pixels(alone[0].read())
    assert max_level_difference(alone_pixels, second) <= 2
    assert max_level_difference(alone_pixels, first) > 10


def test_img2img_and_inpaint_with_uploaded_files(client: replicate.Client, tmp_path: Path) -> None:
    image_path = sample_png(tmp_path)
    with image_path.open("rb") as image:
        img2img = client.run(
            MODEL,
            input={
                "prompt": "a dog",
                "image": image,
                "prompt_strength": 0.5,
                "seed": 5,
                "num_inference_steps": 4,
            },
        )
    with Image.open(io.BytesIO(img2img[0].read())) as result:
        assert result.size == (64, 64)
    with image_path.open("rb") as image, half_mask(tmp_path).open("rb") as mask:
        inpainted = client.run(
            MODEL,
            input={
                "prompt": "a dog",
                "image": image,
                "mask": mask,
                "seed": 5,
                "num_inference_steps": 4,
            },
        )
    with Image.open(io.BytesIO(inpainted[0].read())) as result:
        assert result.size == (64, 64)


def test_img2img_with_base64_inputs_matches_upload(server: ServerProcess, tmp_path: Path) -> None:
    image_path = sample_png(tmp_path, (30, 90, 200))
    inputs = {"prompt": "a dog", "prompt_strength": 0.6, "seed": 9, "num_inference_steps": 4}
    uploaded = replicate.Client(api_token="x", base_url=server.url)
    b64 = replicate.Client(api_token="x", base_url=server.url)
    with image_path.open("rb") as image:
        by_upload = uploaded.run(MODEL, input={**inputs, "image": image})
    with image_path.open("rb") as image:
        by_base64 = b64.run(
            MODEL, input={**inputs, "image": image}, file_encoding_strategy="base64"
        )
    assert png_pixels(by_upload[0].read()) == png_pixels(by_base64[0].read())


def test_invalid_input_is_a_422_naming_the_field(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "x", "width": 100, "height": 64})
    assert caught.value.status == 422
    assert "width" in (caught.value.detail or "")
    with pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "x", "num_inference_steps": 0})
    assert caught.value.status == 422
    assert "num_inference_steps" in (caught.value.detail or "")


def test_bad_scheduler_image_or_mask_is_a_422_when_created(
    client: replicate.Client, server: ServerProcess, tmp_path: Path
) -> None:
    # the official client: run() raises at once, with the field in the detail
    with pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "x", "scheduler": "Euler b", **FAST})
    assert caught.value.status == 422 and caught.value.title == "Input validation failed"
    assert (caught.value.detail or "").startswith("scheduler: unknown scheduler 'Euler b'")
    # an upload (POST /v1/files takes any bytes) that is no image
    with pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "x", "image": io.BytesIO(b"%PDF-1.4 no image")})
    assert caught.value.status == 422
    assert (caught.value.detail or "").startswith("image: is not a decodable image")
    with sample_png(tmp_path).open("rb") as image, pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "x", "image": image, "mask": io.BytesIO(b"no")})
    assert caught.value.status == 422
    assert (caught.value.detail or "").startswith("mask: is not a decodable image")

    # on the wire: the same problem JSON as the dialect's other 422s, on both create routes
    shape = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predictions", json={"input": {"width": 100}}
    ).json()
    not_an_image = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    png = "data:image/png;base64," + base64.b64encode(sample_png(tmp_path).read_bytes()).decode()
    bad = {
        "scheduler": {"scheduler": "Euler b"},
        "image": {"image": not_an_image},
        "mask": {"image": png, "mask": not_an_image},
    }
    for field, values in bad.items():
        for path, extra in (
            (f"/v1/models/{MODEL}/predictions", {}),
            ("/v1/predictions", {"version": MODEL}),
        ):
            response = httpx.post(
                f"{server.url}{path}",
                json={**extra, "input": {"prompt": "x", **values}},
                headers={"Prefer": "wait"},
                timeout=30,
            )
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["field"] == field
            assert problem["detail"].startswith(f"{field}: ")
            assert {key: problem[key] for key in ("title", "status")} == {
                key: shape[key] for key in ("title", "status")
            }
            assert set(problem) - {"allowed"} == set(shape)
            if field == "scheduler":
                assert problem["code"] == "invalid_input"
                assert {"K_EULER", "DPM++ 2M Karras"} <= set(problem["allowed"])
            else:
                assert problem["code"] == "invalid_image" and "allowed" not in problem


def test_unknown_model_is_a_404(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as caught:
        client.run("nobody/nothing", input={"prompt": "x"})
    assert caught.value.status == 404


def test_cancel_a_long_running_prediction(client: replicate.Client) -> None:
    prediction = client.models.predictions.create(
        model=MODEL,
        input={"prompt": "slow", "width": 256, "height": 256, "num_inference_steps": 500},
    )
    deadline = time.monotonic() + 60
    while prediction.status == "starting" and time.monotonic() < deadline:
        time.sleep(0.2)
        prediction.reload()
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled"
    # the worker is free again: a new prediction completes
    output = client.run(MODEL, input={"prompt": "after", **FAST})
    assert len(output) == 1


def test_pagination_newest_first(client: replicate.Client, server: ServerProcess) -> None:
    made = [
        client.models.predictions.create(model=MODEL, input={"prompt": f"page {i}", **FAST})
        for i in range(3)
    ]
    for prediction in made:
        prediction.wait()
    # pages of two, so three new predictions always span more than one page
    first = client.predictions.list(f"{server.url}/v1/predictions?limit=2")
    assert [p.id for p in first.results] == [p.id for p in reversed(made)][:2]
    assert first.next is not None and first.previous is None
    second = client.predictions.list(first.next)  # the client GETs `next` verbatim
    assert 1 <= len(second.results) <= 2  # other tests may have added older ones
    assert second.results[0].id == made[0].id
    assert {p.id for p in first.results}.isdisjoint({p.id for p in second.results})
    assert first.results[-1].created_at >= second.results[0].created_at
    assert second.previous is not None
    back = client.predictions.list(second.previous)
    assert [p.id for p in back.results] == [p.id for p in first.results]
    too_big = httpx.get(f"{server.url}/v1/predictions?limit=101")
    assert too_big.status_code == 422 and "limit" in too_big.json()["detail"]


def test_webhook_completed_exactly_once_with_valid_signature(client: replicate.Client) -> None:
    receiver = WebhookReceiver()
    try:
        prediction = client.models.predictions.create(
            model=MODEL,
            input={"prompt": "hook", **FAST},
            webhook=receiver.url,
            webhook_events_filter=["completed"],
        )
        prediction.wait()
        deadline = time.monotonic() + 20
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # anything else would arrive now
        assert len(receiver.requests) == 1
        received = receiver.requests[0]
        secret = client.webhooks.default.secret()
        # validate() raises InvalidSignatureError unless the signature matches the body
        replicate.webhooks.validate(
            headers=received.headers, body=received.body.decode(), secret=secret
        )
        with pytest.raises(InvalidSignatureError):
            replicate.webhooks.validate(
                headers=received.headers, body=received.body.decode() + " ", secret=secret
            )
        body = json.loads(received.body)
        assert body["id"] == prediction.id and body["status"] == "succeeded"
    finally:
        receiver.close()


def sse_messages(url: str) -> list[dict[str, str]]:
    """The messages of an SSE stream up to ``done``, as ``{field: value}`` dicts."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                current[name] = f"{current[name]}\n{value}" if name in current else value
                continue
            if current:
                messages.append(current)
                current = {}
            if messages and messages[-1].get("event") == "done":
                break
    return messages


def test_sse_stream_delivers_progress_and_done_when_asked(client: replicate.Client) -> None:
    prediction = client.models.predictions.create(
        model=MODEL, input={"prompt": "stream", "width": 64, "height": 64, "num_inference_steps": 8}
    )
    # the playground asks for step progress with previews
    messages = sse_messages(prediction.urls["stream"] + "?progress=1")
    events = [message["event"] for message in messages]
    assert "progress" in events
    assert "output" in events
    assert events[-1] == "done"
    last = json.loads(next(m["data"] for m in reversed(messages) if m["event"] == "progress"))
    assert last["step"] == last["total"] == 8 and last["percentage"] == 1.0
    assert last["preview"].startswith("data:image/jpeg;base64,")


def test_default_sse_stream_has_only_replicates_events_each_with_an_id(
    client: replicate.Client,
) -> None:
    prediction = client.models.predictions.create(
        model=MODEL, input={"prompt": "stream", "width": 64, "height": 64, "num_inference_steps": 8}
    )
    messages = sse_messages(prediction.urls["stream"])
    # the official clients know exactly these names and drop a message without an id
    assert {message["event"] for message in messages} <= {"output", "logs", "error", "done"}
    assert all(message.get("id") for message in messages)
    assert len({message["id"] for message in messages}) == len(messages)
    assert [m["event"] for m in messages].count("output") == 1
    assert messages[-1] == {"event": "done", "id": messages[-1]["id"], "data": "{}"}


def test_official_client_stream_yields_the_output_and_ends(
    client: replicate.Client,
) -> None:
    events = list(client.stream(MODEL, input={"prompt": "stream", "seed": 4, **FAST}))
    names = [event.event for event in events]
    assert names[-1] is ServerSentEvent.EventType.DONE
    outputs = [event for event in events if event.event is ServerSentEvent.EventType.OUTPUT]
    assert len(outputs) == 1
    # a file object, as Replicate's https URLs give: plain http URLs would reach the
    # caller as strings, so a streamed prediction carries its output inline
    assert isinstance(outputs[0].data, FileOutput)
    assert outputs[0].data.read().startswith(b"\x89PNG")
    logs = "\n".join(e.data for e in events if e.event is ServerSentEvent.EventType.LOGS)
    assert "seed: 4" in logs


def test_prediction_stream_of_a_created_prediction_ends_with_done(
    client: replicate.Client,
) -> None:
    prediction = client.models.predictions.create(
        model=MODEL, input={"prompt": "stream", "seed": 6, **FAST}, stream=True
    )
    events = list(prediction.stream())
    outputs = [e.data for e in events if e.event is ServerSentEvent.EventType.OUTPUT]
    assert len(outputs) == 1 and isinstance(outputs[0], FileOutput)
    assert events[-1].event is ServerSentEvent.EventType.DONE
    # a finished prediction replays its events: streaming it again gives the same output
    again = list(prediction.stream())
    assert [e.data.url for e in again if isinstance(e.data, FileOutput)] == [outputs[0].url]
    assert again[-1].event is ServerSentEvent.EventType.DONE


def test_data_uri_input_image_decodes(client: replicate.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    uri = "data:application/octet-stream;base64," + base64.b64encode(buffer.getvalue()).decode()
    output = client.run(
        MODEL, input={"prompt": "leaf", "image": uri, "seed": 2, "num_inference_steps": 4}
    )
    assert len(output) == 1


def test_wait_that_expires_answers_starting_then_the_client_polls(
    server: ServerProcess,
) -> None:
    slow = {"prompt": "slow", "width": 128, "height": 128, "num_inference_steps": 60}
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predictions",
        json={"input": slow},
        headers={"Prefer": "wait=1"},
        timeout=30,
    )
    assert response.status_code == 201
    body = response.json()
    # run() only polls when it sees "starting" (CLIENT_CONTRACTS §1.3)
    assert body["status"] == "starting" and body["output"] is None
    httpx.post(body["urls"]["cancel"], timeout=30)


def test_cancel_after_deadline_aborts_a_queued_prediction(
    client: replicate.Client, server: ServerProcess
) -> None:
    blocker = client.models.predictions.create(
        model=MODEL,
        input={"prompt": "blocker", "width": 128, "height": 128, "num_inference_steps": 60},
    )
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predictions",
        json={"input": {"prompt": "late", **FAST}},
        headers={"Cancel-After": "1s"},
        timeout=30,
    )
    assert response.status_code == 201
    queued_id = response.json()["id"]
    time.sleep(1.5)
    blocker.cancel()
    late = client.predictions.get(queued_id)
    late.wait()
    # "aborted" is not a status the client accepts: it reads canceled, the error says why
    assert late.status == "canceled"
    assert late.error is not None and "aborted" in late.error
    bad = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predictions",
        json={"input": {"prompt": "x"}},
        headers={"Cancel-After": "soon"},
        timeout=30,
    )
    assert bad.status_code == 422 and "Cancel-After" in bad.json()["detail"]


def test_unknown_prediction_is_a_404(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as caught:
        client.predictions.get("doesnotexist")
    assert caught.value.status == 404


def test_tokens_are_required_when_configured(tmp_path: Path) -> None:
    secured = ServerProcess(data_dir=tmp_path, port=free_port(), extra_args=["--token", "s3cret"])
    secured.start()
    try:
        good = replicate.Client(api_token="s3cret", base_url=secured.url)
        assert len(good.run(MODEL, input={"prompt": "ok", **FAST})) == 1
        bad = replicate.Client(api_token="wrong", base_url=secured.url)
        with pytest.raises(ReplicateError) as caught:
            bad.run(MODEL, input={"prompt": "no", **FAST})
        assert caught.value.status == 401
        assert httpx.get(f"{secured.url}/v1/predictions").status_code == 401
        assert (
            httpx.get(
                f"{secured.url}/v1/predictions", headers={"Authorization": "Token s3cret"}
            ).status_code
            == 200
        )
        assert httpx.get(f"{secured.url}/health").status_code == 200
    finally:
        secured.stop()


def square_map_bytes() -> bytes:
    """A white square on black: a structure every ControlNet type can follow."""
    picture = Image.new("RGB", (64, 64), "black")
    picture.paste((255, 255, 255), (16, 16, 48, 48))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def square_map(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    path.write_bytes(square_map_bytes())
    return path


def test_controlnet_inputs_steer_the_image_and_return_the_map(
    client: replicate.Client, tmp_path: Path
) -> None:
    base = {"prompt": "a red fox", "seed": 12, **FAST}
    plain = client.run(MODEL, input=base)
    with square_map(tmp_path).open("rb") as control:
        steered = client.run(
            MODEL,
            input={
                **base,
                "controlnet_1": "canny",  # a type: the demo's tiny-sd-canny
                "controlnet_1_image": control,
                "controlnet_1_conditioning_scale": 1.5,
                "return_control_maps": True,
            },
        )
    with square_map(tmp_path).open("rb") as control:
        unweighted = client.run(
            MODEL,
            input={
                **base,
                "controlnet_1": "tiny-sd-canny",
                "controlnet_1_image": control,
                "controlnet_1_conditioning_scale": 0,
            },
        )
    plain_pixels = png_pixels(plain[0].read())
    assert len(steered) == 2  # the image, then the canny map of the square
    assert max_level_difference(png_pixels(steered[0].read()), plain_pixels) > 10
    with Image.open(io.BytesIO(steered[1].read())) as edges:
        grey = edges.convert("L")
        # edges found at 512 px and fitted to 64: a faint line on the border, nothing else
        assert grey.getpixel((32, 32)) == 0 and grey.getpixel((4, 4)) == 0
        assert max(grey.getpixel((x, 32)) for x in range(13, 20)) > 8
    assert png_pixels(unweighted[0].read()) == plain_pixels  # weight 0: no ControlNet


def test_controlnet_of_the_wrong_family_is_a_422(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as refused:
        client.predictions.create(
            model=MODEL,
            input={
                "prompt": "x",
                "controlnet_1": "tiny-sdxl-canny",
                "controlnet_1_image": "data:image/png;base64,"
                + base64.b64encode(square_map_bytes()).decode(),
            },
        )
    assert refused.value.status == 422
    assert "tiny-sdxl-canny is for sdxl models" in str(refused.value)


# -- SD3 ------------------------------------------------------------------------------------

SD3 = "sdserve/tiny-sd3"


def test_sd3_model_generates_and_its_schema_shows_its_defaults(
    client: replicate.Client, server: ServerProcess
) -> None:
    fields = {"prompt": "a red fox", "seed": 5, "num_inference_steps": 2}
    first = client.run(SD3, input=fields)
    again = client.run(SD3, input=fields)
    data = first[0].read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 64)  # the tiny model's native size
        assert "Model: sdserve/tiny-sd3" in image.info["parameters"]
        assert "FlowMatchEuler" in image.info["parameters"]
    assert png_pixels(data) == png_pixels(again[0].read())
    body = httpx.get(f"{server.url}/v1/models/{SD3}").json()
    assert body["latest_version"]["openapi_schema"]
    schema = body["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]
    props = schema["properties"]
    assert props["num_inference_steps"]["default"] == 28
    assert props["guidance_scale"]["default"] == 7.0
    assert props["scheduler"]["default"] == "FlowMatchEuler"
    assert props["scheduler"]["enum"] == [
        "FlowMatchEuler",
        "FlowMatchEulerStochastic",
        "FlowMatchHeun",
    ]


def test_sd3_refuses_weighted_prompts_and_other_families_schedulers(
    client: replicate.Client,
) -> None:
    with pytest.raises(ReplicateError) as caught:
        client.run(SD3, input={"prompt": "a (red:1.4) fox", "num_inference_steps": 2})
    assert caught.value.status == 422
    assert (caught.value.detail or "").startswith("prompt: prompt weighting is not supported")
    with pytest.raises(ReplicateError) as caught:
        client.run(SD3, input={"prompt": "a fox", "scheduler": "DPM++ 2M Karras"})
    assert caught.value.status == 422
    detail = caught.value.detail or ""
    assert detail.startswith("scheduler: ") and "FlowMatchEuler" in detail


def test_an_upscale_model_takes_an_image_and_a_scale(
    client: replicate.Client, tmp_path: Path
) -> None:
    listed = [model.id for model in client.models.list().results]
    assert "upscalers/tiny-realesr-x4" in listed and "upscalers/lanczos" in listed
    schema = client.models.get("upscalers/tiny-realesr-x4").latest_version.openapi_schema
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert inputs["scale"]["default"] == 4 and "prompt" not in inputs
    with open(sample_png(tmp_path), "rb") as image:
        (output,) = client.run("upscalers/tiny-realesr-x4", input={"image": image, "scale": 2})
    with Image.open(io.BytesIO(output.read())) as upscaled:
        assert upscaled.size == (128, 128)
    # Replicate's Real-ESRGAN name reaches the served model upscaler, at its own 4x
    with open(sample_png(tmp_path), "rb") as image:
        (output,) = client.run("nightmareai/real-esrgan", input={"image": image})
    with Image.open(io.BytesIO(output.read())) as upscaled:
        assert upscaled.size == (256, 256)
    with pytest.raises(ReplicateError) as missing:
        client.run("upscalers/lanczos", input={"scale": 2})
    assert "image" in str(missing.value)


def test_a_diffusion_upscaler_takes_an_image_and_a_prompt(
    client: replicate.Client, tmp_path: Path
) -> None:
    model = "upscalers/tiny-x4-upscaler"
    assert model in [model.id for model in client.models.list().results]
    schema = client.models.get(model).latest_version.openapi_schema
    inputs = schema["components"]["schemas"]["Input"]["properties"]
    assert inputs["scale"]["default"] == 4 and inputs["num_inference_steps"]["default"] == 20
    assert "prompt" in inputs and "seed" in inputs
    values = {"prompt": "a red fox", "num_inference_steps": 2, "seed": 3}
    with open(sample_png(tmp_path), "rb") as image:
        (output,) = client.run(model, input={"image": image, **values})
    with Image.open(io.BytesIO(output.read())) as upscaled:
        assert upscaled.size == (256, 256)  # the 64x64 sample, 4x
    with open(sample_png(tmp_path), "rb") as image:
        (output,) = client.run(model, input={"image": image, "scale": 1.5, **values})
    with Image.open(io.BytesIO(output.read())) as upscaled:
        assert upscaled.size == (96, 96)
