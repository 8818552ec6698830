"""The sd-webui-controlnet extension's routes, at the server root as the extension serves
them (``/controlnet/...``, not under ``/sdapi/v1``), behind the same token as ``/sdapi``.

The listings read the service's own ControlNet and IP-Adapter catalogs, those it checks
units against (built by ``sdserve.wiring.controlnet_catalog`` and ``ip_adapter_catalog``).
``/controlnet/detect`` runs the built-in preprocessors in this process: they need no
torch, and run in a thread, off the event loop; images are decoded within the input pixel
limit, so a decompression bomb is a 4xx. An annotator (a preprocessor on weights, such as
``depth_midas``) needs torch, so it runs on a worker: a ``control_maps_only`` job per image
on the first served model a live worker takes, whose outputs are the maps.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sdserve.api.a1111.controlnet_schemas import (
    API_VERSION,
    DetectPlan,
    DetectRequest,
    detect_plan,
    render_control_types,
    render_module_list,
)
from sdserve.api.a1111.schemas import (
    a1111_error_response,
    decode_b64_image,
    failure_response,
    to_data_uri,
)
from sdserve.api.edge import Edge
from sdserve.domain.controls import NO_PREPROCESSOR
from sdserve.domain.jobs import Status
from sdserve.errors import ModelNotFound
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.images import open_image
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.annotators import AnnotatorCatalog, known
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.ip_adapter import IpAdapterCatalog


def mount(edge: Edge) -> None:
    """Serve ``/controlnet/*`` behind the token, with A1111's error JSON."""
    # the service's own catalog: what it lists is what it checks units against
    catalog = edge.service.controlnets() or ControlNetCatalog(None)
    api = ControlNetApi(
        edge,
        catalog,
        edge.service.ip_adapters() or IpAdapterCatalog(None),
        edge.service.annotators() or AnnotatorCatalog(None),
    )
    edge.include(api.router(), errors=a1111_error_response, under=["/controlnet"])


class ControlNetApi:
    """``/controlnet/version``, ``model_list``, ``module_list``, ``control_types``,
    ``settings`` and ``detect``."""

    def __init__(
        self,
        edge: Edge,
        catalog: ControlNetCatalog,
        ip_adapters: IpAdapterCatalog,
        annotators: AnnotatorCatalog | None = None,
    ) -> None:
        self.edge = edge
        self.catalog = catalog
        self.ip_adapters = ip_adapters
        self.annotators = annotators or AnnotatorCatalog(None)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/controlnet")
        get, post = ["GET"], ["POST"]
        router.add_api_route("/version", self.version, methods=get)
        router.add_api_route("/model_list", self.model_list, methods=get)
        router.add_api_route("/module_list", self.module_list, methods=get)
        router.add_api_route("/control_types", self.control_types, methods=get)
        router.add_api_route("/settings", self.settings, methods=get)
        router.add_api_route("/detect", self.detect, methods=post)
        return router

    # sync routes: FastAPI runs them in its thread pool (the catalog may scan a folder)

    def version(self) -> Any:
        return {"version": API_VERSION}

    def model_list(self, update: bool = True) -> Any:
        # the catalogs read their folders again whenever they changed: always up to date
        titles = [spec.title for spec in self.catalog.all()]
        titles += [spec.title for spec in self.ip_adapters.all()]
        return {"model_list": titles}

    def module_list(self, alias_names: bool = False) -> Any:
        return render_module_list(alias_names=alias_names, modules=self.annotators)

    def control_types(self) -> Any:
        return render_control_types(self.catalog.all(), self.ip_adapters.all(), self.annotators)

    def settings(self) -> Any:
        return {"control_net_unit_count": self.edge.limits.max_controlnets}

    async def detect(self, request: Request, body: DetectRequest) -> Any:
        plan = await asyncio.to_thread(detect_plan, body, self.annotators)
        module = known(plan.module)
        if module is not None and module.needs_weights:
            return await self._detect_on_worker(request, plan, body)
        return await asyncio.to_thread(self._detect_here, plan, body)

    def _detect_here(self, plan: DetectPlan, body: DetectRequest) -> Any:
        field, images = body.images()
        pixels = self.edge.limits.max_input_pixels
        maps = []
        for index, value in enumerate(images):
            where = f"{field}.{index}"
            image = open_image(decode_b64_image(value, where), where, max_pixels=pixels)
            mask = None
            if body.controlnet_masks:
                mask_field = f"controlnet_masks.{index}"
                data = decode_b64_image(body.controlnet_masks[index], mask_field)
                mask = open_image(data, mask_field, max_pixels=pixels)
            maps.append(_png_b64(_detect_one(plan, image, mask)))
        return {"images": maps, "info": "Success"}

    async def _detect_on_worker(
        self, request: Request, plan: DetectPlan, body: DetectRequest
    ) -> Any:
        model = await asyncio.to_thread(self._model_with_worker)
        module = known(plan.module)
        assert module is not None  # detect_plan checked it
        field, images = body.images()
        maps = []
        for index, value in enumerate(images):
            unit: dict[str, Any] = {
                # never looked up (control_maps_only): the type the map is of
                "model": module.control_type,
                "image": to_data_uri(value, f"{field}.{index}"),
                "preprocessor": plan.module,
                "processor_res": plan.resolution,
                "threshold_a": plan.threshold_a,
                "threshold_b": plan.threshold_b,
            }
            if body.controlnet_masks:
                where = f"controlnet_masks.{index}"
                unit["mask"] = to_data_uri(body.controlnet_masks[index], where)
            values = {"controlnets": [unit], "control_maps_only": True}
            names = {
                "controlnets.0.image": f"{field}.{index}",
                "controlnets.0.mask": f"controlnet_masks.{index}",
                "controlnets.0.preprocessor": "controlnet_module",
                "controlnets.0.threshold_a": "controlnet_threshold_a",
                "controlnets.0.threshold_b": "controlnet_threshold_b",
            }
            job = await self.edge.create(model, values, names=names, source="a1111")
            job = await self.edge.wait(job.id, request)
            if job.status is not Status.SUCCEEDED:
                return failure_response(job)
            outputs = await asyncio.to_thread(self._outputs, job)
            maps += [base64.b64encode(data).decode("ascii") for data in outputs]
        return JSONResponse({"images": maps, "info": "Success"})

    def _outputs(self, job: JobRecord) -> list[bytes]:
        return [self.edge.service.open_output(key)[0] for key in job.output or []]

    def _model_with_worker(self) -> str:
        """The first served model a live worker takes (the first served one when this
        broker cannot list its workers)."""
        served = [model.name for model in self.edge.service.models()]
        if not served:
            raise ModelNotFound("no served model: an annotator runs on a model's worker")
        workers = self.edge.service.workers()
        if workers.known:
            taken = {name for worker in workers.live for name in worker.models}
            return next((name for name in served if name in taken), served[0])
        return served[0]


def _detect_one(plan: DetectPlan, image: Any, mask: Any) -> Any:
    if plan.module == NO_PREPROCESSOR:
        return image.convert("RGB")
    return preprocessors.detect(
        plan.module,
        image.convert("RGB"),
        resolution=plan.resolution,
        threshold_a=plan.threshold_a,
        threshold_b=plan.threshold_b,
        mask=mask,
    )


def _png_b64(image: Any) -> str:
    """Raw base64 PNG (no data-URI prefix: clients ``b64decode`` it directly)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
