"""imgembed: image embeddings as a service.

SAM 2 image features (with metadata for client-side mask decoding), served over HTTP, RunPod and a
Python client. Importing the package does nothing heavy: no model load, no logging set-up, no network.
"""

__version__ = "0.1.0"
