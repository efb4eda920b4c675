"""The settings of `softprompt serve --ray`, and joining or starting its Ray cluster.

This module does not import Ray until `connect` runs: a cluster started here binds
loopback only, which Ray decides when it is first imported (see `connect`). The
deployments themselves are in serving/ray_app.py; docs/serving_ray.md says how to run.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from softprompt.errors import UserError
from softprompt.serving.server import ServeOptions

# Ray starts a single-machine cluster, every port on 127.0.0.1, when this is "0" at its
# import (the name is Ray's: its single-machine mode for laptops); otherwise it binds
# the machine's network address, reachable from other machines.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RaySettings(BaseModel):
    """`softprompt serve --ray`'s settings, also the arguments of the `serve run` builder
    (`serve run softprompt.serving.ray_app:app_builder prompts_dir=DIR ...`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompts_dir: str = Field(
        description="directory of prompts, bundles and banks (the same path on every node)"
    )
    model: str | None = Field(None, description="base model (default: the first prompt's)")
    replicas: int = Field(2, ge=1, description="replicas, each with the model and an engine")
    max_prompts_per_replica: int = Field(
        8, ge=1, description="prompts a replica holds; the least recently used is dropped"
    )
    routers: int = Field(1, ge=1, description="replicas of the ingress (HTTP API, routing)")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica")
    retries: int = Field(
        2, ge=0, description="times a request is sent again when its replica stops"
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="seconds a replica may take to answer (then 503)"
    )
    max_batch_size: int = Field(16, ge=1, description="inputs answered together")
    max_wait_ms: float = Field(10.0, ge=0, description="wait for more inputs this long")
    max_queue: int = Field(256, ge=1, description="inputs waiting per replica (503 beyond)")
    api_key: str | None = Field(None, description="required as 'Authorization: Bearer KEY'")
    max_body_mb: float = Field(32.0, gt=0, description="request body limit (413)")
    reload_interval: float = Field(
        1.0, gt=0, description="seconds between looks at a held prompt's files"
    )
    max_image_pixels: int | None = Field(None, ge=1, description="larger images get 400")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="base model weights"
    )

    @classmethod
    def from_flags(cls, **values) -> RaySettings:
        """The settings of `softprompt serve`'s flags.

        Raises:
            UserError: a value out of range, naming its flag.
        """
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-")
            raise UserError(f"{flag} {first.get('input')!r}: {first['msg']}") from None

    def serve_options(self, host: str = "127.0.0.1") -> ServeOptions:
        """The options each replica's `PromptServer` and the ingress's guards read."""
        return ServeOptions(
            prompts_dir=self.prompts_dir,
            model=self.model,
            host=host,
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            max_queue=self.max_queue,
            api_key=self.api_key,
            max_body_mb=self.max_body_mb,
            reload_interval=self.reload_interval,
            max_image_pixels=self.max_image_pixels,
            dtype=self.dtype,
        )


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address` ("auto": the one this machine is part of, as
    `ray start` made it), or with None start one on this machine, bound to 127.0.0.1.

    Returns:
        Whether a cluster was started (the caller shuts it down when done).
    """
    if address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray's first import
    import ray

    if address is None:
        ray.init(include_dashboard=False)
        return True
    ray.init(address=address)
    return False
