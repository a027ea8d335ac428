"""Locust user for benchmarks/serve.py: POSTs prebuilt multipart bodies (real test samples).

Environment: ``MM_TOKEN``, ``MM_MODEL``, ``MM_BODIES`` (a .npz of ``body_<i>`` byte arrays and
``content_type``) prepared by benchmarks/serve.py.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

_data = np.load(os.environ["MM_BODIES"])
BODIES = [_data[k].tobytes() for k in sorted(_data.files) if k.startswith("body_")]
CTYPE = str(_data["content_type"])
PATH = f"/v1/models/{os.environ['MM_MODEL']}/predict"
HEADERS = {"Authorization": f"Bearer {os.environ['MM_TOKEN']}", "Content-Type": CTYPE}
_cycle = itertools.cycle(BODIES)


class Clinician(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        self.client.post(PATH, data=next(_cycle), headers=HEADERS, name="predict")
