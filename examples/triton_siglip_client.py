"""SigLIP 2 image and text embeddings from a Triton server with ``tritonclient``, and their match.

The server is either Triton serving the repository ``imgembed export triton --siglip MODEL``
writes, or imgembed itself (``imgembed serve --model MODEL``): both speak the Open Inference
Protocol (v2) with the same model names (``siglip``, ``siglip_text``, or the model's own name and
``MODEL_text``) and tensors (``image_bytes`` or ``text`` BYTES ``[B]`` in, ``embeddings`` FP32
``[B,D]`` out, rows of L2 norm 1), so this file runs against either by changing ``--url``.

    python examples/triton_siglip_client.py --url localhost:8000 --image cat.jpg --image dog.png \\
        --text "a photo of a cat" --text "a photo of a dog"

Image files are sent as they are (the server decodes and resizes them); texts as UTF-8. The
printed table is each image's cosine similarity with each text. Needs ``numpy`` and
``tritonclient[http]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient


def _bytes_input(name: str, items: Sequence[bytes]) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(list(items), dtype=np.object_), binary_data=True)
    return tensor


def _embeddings(
    client: httpclient.InferenceServerClient, model: str, name: str, items: Sequence[bytes]
) -> np.ndarray:
    output = httpclient.InferRequestedOutput("embeddings", binary_data=True)
    result = client.infer(model, [_bytes_input(name, items)], outputs=[output])
    return result.as_numpy("embeddings")


def embed_images(
    client: httpclient.InferenceServerClient, files: Sequence[bytes], model: str = "siglip"
) -> np.ndarray:
    """Embeds encoded image files (JPEG, PNG, ...).

    Returns:
        ``[B,D]`` float32, each row of L2 norm 1.
    """
    return _embeddings(client, model, "image_bytes", files)


def embed_texts(
    client: httpclient.InferenceServerClient, texts: Sequence[str], model: str = "siglip_text"
) -> np.ndarray:
    """Embeds texts.

    Returns:
        ``[B,D]`` float32, each row of L2 norm 1, in the images' space.
    """
    return _embeddings(client, model, "text", [text.encode("utf-8") for text in texts])


def run(
    url: str, files: Sequence[bytes], texts: Sequence[str], model: str = "siglip"
) -> tuple[np.ndarray, np.ndarray]:
    """Image and text embeddings from the server at ``url`` (``host:port``).

    Args:
        url: The server.
        files: Encoded image files.
        texts: Texts.
        model: The image model's name; the text model is ``{model}_text``.

    Returns:
        ``[I,D]`` image and ``[T,D]`` text embeddings.
    """
    client = httpclient.InferenceServerClient(url=url, network_timeout=120)
    try:
        images = embed_images(client, files, model)
        text_vectors = embed_texts(client, texts, f"{model}_text")
    finally:
        client.close()
    return images, text_vectors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8000", help="server host:port")
    parser.add_argument("--model", default="siglip", help="image model name (default siglip)")
    parser.add_argument("--image", action="append", required=True, help="an image file")
    parser.add_argument("--text", action="append", required=True, help="a text")
    args = parser.parse_args(argv)
    files = [Path(path).read_bytes() for path in args.image]
    images, texts = run(args.url, files, args.text, args.model)
    similarity = images @ texts.T  # [I,T] cosine similarities
    width = max(len(text) for text in args.text)
    for row, path in zip(similarity, args.image, strict=True):
        print(path)
        for value, text in zip(row, args.text, strict=True):
            print(f"  {text:<{width}}  {value:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
