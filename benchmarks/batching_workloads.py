"""What ``batching.py`` sends to each model, and how it checks each answer against its request."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
from sam2_fixtures import PHOTO_SIZE

from imgembed.codecs import BINARY_HEADER_LENGTH

Send = Callable[[httpx.AsyncClient, str, int, bytes], Awaitable[None]]
"""Sends photo number ``index`` (its JPEG bytes) to the server at a base URL; raises if the
answer is an error or belongs to another request."""


@dataclass
class Workload:
    """One model's requests in the batching benchmark.

    Attributes:
        model: Model name served.
        section: ``RESULTS.md`` section written.
        requests_per_cell: Timed requests by number of clients.
        description: The ``Requests`` line of the section, after the photos.
        new_sender: A fresh request sender for one server (a sender may remember answers).
    """

    model: str
    section: str
    requests_per_cell: dict[int, int]
    description: str
    new_sender: Callable[[], Send]


SAM2_FORM_FIELDS = {"dtype": "float16", "encoding": "binary"}


async def send_sam2(client: httpx.AsyncClient, base_url: str, index: int, photo: bytes) -> None:
    """One SAM 2 embed upload; the answer's ``orig_size`` must be the photo's."""
    response = await client.post(
        f"{base_url}/v1/sam2/embed",
        data=SAM2_FORM_FIELDS,
        files={"file": ("photo.jpg", photo, "image/jpeg")},
    )
    response.raise_for_status()
    header = json.loads(response.content[: int(response.headers[BINARY_HEADER_LENGTH])])
    if header["meta"]["orig_size"] != [PHOTO_SIZE[1], PHOTO_SIZE[0]]:
        raise RuntimeError(f"answer for another image: {header['meta']}")


@dataclass
class SiglipAnswers:
    """The first vector seen for each photo; every later answer for it must match it."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)

    async def send(
        self, client: httpx.AsyncClient, base_url: str, index: int, photo: bytes
    ) -> None:
        """One SigLIP 2 image upload; its vector must match earlier answers for the same photo
        (cosine 0.999 or more: batched and single passes differ only by rounding)."""
        response = await client.post(
            f"{base_url}/v1/siglip/embed",
            files={"files": ("photo.jpg", photo, "image/jpeg")},
        )
        response.raise_for_status()
        (embedding,) = response.json()["embeddings"]
        vector = np.asarray(embedding["vector"], dtype=np.float64)
        first = self.vectors.setdefault(index, vector)
        if float(first @ vector) < 0.999:
            raise RuntimeError(f"photo {index}: answer does not match the photo's earlier answers")


SAM2 = Workload(
    model="sam2.1-hiera-tiny",
    section="Dynamic batching",
    requests_per_cell={1: 8, 4: 12, 16: 32},
    description="as multipart uploads to `/v1/sam2/embed`, float16 features, `binary` "
    "encoding, all three levels (8 MiB per answer), over loopback",
    new_sender=lambda: send_sam2,
)
SIGLIP = Workload(
    model="siglip2-base-patch16-224",
    section="Dynamic batching (SigLIP 2)",
    requests_per_cell={1: 24, 4: 48, 16: 96},
    description="one per request as multipart uploads to `/v1/siglip/embed`, JSON answers "
    "(a 768-value vector), each checked against the first answer for the same photo, over "
    "loopback",
    new_sender=lambda: SiglipAnswers().send,
)
WORKLOADS = {workload.model: workload for workload in (SAM2, SIGLIP)}
