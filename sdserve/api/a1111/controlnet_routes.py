"""The sd-webui-controlnet extension's routes, at the server root as the extension serves
them (``/controlnet/...``, not under ``/sdapi/v1``), behind the same token as ``/sdapi``.

The listings read the service's own ControlNet and IP-Adapter catalogs, those it checks
units against (built by ``sdserve.wiring.controlnet_catalog`` and ``ip_adapter_catalog``).
``/controlnet/detect`` runs the built-in preprocessors in this process: they need no
torch, and a sync route runs in FastAPI's thread pool, off the event loop; images are
decoded within the input pixel limit, so a decompression bomb is a 4xx.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import APIRouter

from sdserve.api.a1111.controlnet_schemas import (
    API_VERSION,
    DetectPlan,
    DetectRequest,
    detect_plan,
    render_control_types,
    render_module_list,
)
from sdserve.api.a1111.schemas import a1111_error_response, decode_b64_image
from sdserve.api.edge import Edge
from sdserve.domain.controls import NO_PREPROCESSOR
from sdserve.jobs.images import open_image
from sdserve.models.controlnet import preprocessors
from sdserve.models.controlnet.catalog import ControlNetCatalog
from sdserve.models.ip_adapter import IpAdapterCatalog


def mount(edge: Edge) -> None:
    """Serve ``/controlnet/*`` behind the token, with A1111's error JSON."""
    # the service's own catalog: what it lists is what it checks units against
    catalog = edge.service.controlnets() or ControlNetCatalog(None)
    api = ControlNetApi(edge, catalog, edge.service.ip_adapters() or IpAdapterCatalog(None))
    edge.include(api.router(), errors=a1111_error_response, under=["/controlnet"])


class ControlNetApi:
    """``/controlnet/version``, ``model_list``, ``module_list``, ``control_types``,
    ``settings`` and ``detect``."""

    def __init__(
        self, edge: Edge, catalog: ControlNetCatalog, ip_adapters: IpAdapterCatalog
    ) -> None:
        self.edge = edge
        self.catalog = catalog
        self.ip_adapters = ip_adapters

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
        return render_module_list(alias_names=alias_names)

    def control_types(self) -> Any:
        return render_control_types(self.catalog.all(), self.ip_adapters.all())

    def settings(self) -> Any:
        return {"control_net_unit_count": self.edge.limits.max_controlnets}

    def detect(self, body: DetectRequest) -> Any:
        plan = detect_plan(body)
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
