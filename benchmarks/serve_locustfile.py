"""Locust user for benchmarks/serve.py: POSTs prebuilt multipart bodies (real test samples).

Environment: ``MM_TOKEN``, ``MM_MODEL``, ``MM_BODIES`` (a .npz of ``body_<i>`` byte arrays and
``content_types``, one per body) prepared by benchmarks/serve.py.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

_data = np.load(os.environ["MM_BODIES"])
_bodies = [_data[k].tobytes() for k in sorted(_data.files) if k.startswith("body_")]
_auth = f"Bearer {os.environ['MM_TOKEN']}"
REQUESTS = [
    (body, {"Authorization": _auth, "Content-Type": str(ctype)})
    for body, ctype in zip(_bodies, _data["content_types"], strict=True)
]
PATH = f"/v1/models/{os.environ['MM_MODEL']}/predict"
_cycle = itertools.cycle(REQUESTS)


class Clinician(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        body, headers = next(_cycle)
        self.client.post(PATH, data=body, headers=headers, name="predict")
