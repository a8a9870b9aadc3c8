"""Configuration as frozen dataclasses, passed down explicitly; every default is stated here once.

Nothing here reads the environment or argv: the adapters build these objects from flags and
``IMGEMBED_*`` variables (:mod:`imgembed.settings.environment`, whose table takes its defaults
from these classes) and hand them to the engine and server. A leaf: no torch, no package imports
beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Backend = Literal["torch", "onnxruntime"]
"""What runs a SAM 2 model's image encoder: PyTorch, or ONNX Runtime on an ``imgembed export onnx``."""

OnnxProvider = Literal["auto", "cpu", "cuda", "tensorrt"]
"""ONNX Runtime's execution provider: ``auto`` (CUDA when the installed ONNX Runtime has it, else
the CPU, saying so; always the CPU for a model placed on the CPU), ``cpu``, or ``cuda`` /
``tensorrt`` (refused unless the session runs on it)."""

ArenaExtendStrategy = Literal["kSameAsRequested", "kNextPowerOfTwo"]
"""How ONNX Runtime's CUDA memory arena grows: by what is asked, or in powers of two."""

CudnnConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]
"""How ONNX Runtime's CUDA provider picks cuDNN convolution algorithms."""

ResizeMode = Literal["stretch", "letterbox"]
"""How an image becomes the square model input: ``stretch`` (SAM 2's training resize) or
``letterbox`` (keep aspect ratio, pad bottom/right with zeros after normalisation)."""

FeatureDtype = Literal["float32", "float16", "bfloat16"]
"""Numeric type of features returned to clients."""

DeviceChoice = Literal["auto", "cpu", "cuda"]
"""Where a model runs: ``auto`` picks CUDA when present, else CPU."""

PreprocessChoice = Literal["auto", "cpu", "device"]
"""Where images are resized and normalised: ``cpu`` (the worker threads), or ``device`` (the decoded
8-bit pixels are uploaded from pinned memory and resized and normalised on the model's device);
``auto`` picks ``device`` on CUDA, else ``cpu``."""

WarmupChoice = Literal["auto"] | bool
"""The start-up warm-up pass: ``True`` always, ``False`` never, ``auto`` only on a GPU. There it
buys the first request CUDA's lazy set-up (libraries, cuDNN's kernel choice); on a CPU the first
request was as fast without it, so it would only delay readiness by a whole forward pass
(benchmarks/RESULTS.md, "Cold start")."""

ComputeDtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
"""The precision of a model's forward passes: ``auto`` is float32 on a CPU, bfloat16 autocast on a
GPU with native bfloat16, float16 autocast on an older GPU; ``float32`` runs without autocast (and
without TF32) on any device; ``bfloat16`` is autocast on CUDA or the CPU; ``float16`` is autocast
on CUDA only."""

Encoding = Literal["npz_base64", "npz_base64_uncompressed", "binary"]
"""How features travel: the seed's base64 ``.npz`` (compressed or not), or raw bytes."""

MEBIBYTE = 1024 * 1024

DEFAULT_MODEL = "sam2.1-hiera-tiny"
"""The model served, and exported, when none is named."""


@dataclass(frozen=True)
class FetchPolicy:
    """Rules for downloading images from client-supplied URLs.

    Attributes:
        timeout_s: Total time allowed for one download, connect to last byte.
        max_bytes: Largest body accepted; larger downloads are cut off and refused.
        max_redirects: Redirects followed before giving up; each hop is re-validated.
        allow_private_networks: When ``False`` (the default) loopback, private, link-local,
            carrier-grade NAT, multicast, reserved and cloud metadata addresses are refused.
        allowed_hosts: Host names or IP networks (CIDR) allowed even when private, for example
            ``("127.0.0.1/32", "images.internal")``.
        allowed_schemes: URL schemes accepted.
    """

    timeout_s: float = 10.0
    max_bytes: int = 32 * MEBIBYTE
    max_redirects: int = 5
    allow_private_networks: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")


@dataclass(frozen=True)
class InputLimits:
    """Limits on what a request may carry.

    Attributes:
        max_body_bytes: Largest HTTP request body, JSON or multipart.
        max_image_pixels: Largest decoded image (width x height); guards against decompression
            bombs. Pillow itself refuses images over about 179 million pixels whatever this says.
        min_image_side: Smallest accepted width or height in pixels.
        max_prompt_points: Most points one segmentation object may carry (boxes not counted).
        max_prompt_objects: Most objects (point sets or boxes) one segment request may decode.
        max_batch_images: Most images one SigLIP embedding request may carry.
        max_texts: Most texts one text embedding request may carry.
        max_text_chars: Longest text accepted, in characters.
        max_json_depth: Deepest nesting of arrays and objects in a JSON body (a RunPod event's
            ``input`` included); deeper documents are refused before parsing.
        max_json_number_chars: Longest number in a JSON body, in characters; longer ones are
            refused before parsing.
    """

    max_body_bytes: int = 48 * MEBIBYTE
    max_image_pixels: int = 64_000_000
    min_image_side: int = 2
    max_prompt_points: int = 64
    max_prompt_objects: int = 256
    max_batch_images: int = 64
    max_texts: int = 256
    max_text_chars: int = 1000
    max_json_depth: int = 64
    max_json_number_chars: int = 100


@dataclass(frozen=True)
class BatchingSettings:
    """How one model's requests are grouped into batches.

    Attributes:
        max_batch_size: Most requests run in one forward pass; 1 turns batching off, and 0 (the
            default) leaves the size to the engine, by model and device: on a CPU
            :data:`DEFAULT_BATCH_SIZE` or :data:`SAM2_ENCODER_BATCH_SIZE_ON_CPU`, on a GPU by its
            free memory (``imgembed.runtime.batch_size``).
        max_queue_delay_ms: Longest a request waits for others to join its batch once the device
            is free; a batch runs as soon as it is full or this delay passes, whichever is first.
        max_queue_size: Requests waiting at most; beyond it new requests are refused with 429.
    """

    max_batch_size: int = 0
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 64

    def with_default_batch_size(self, size: int) -> BatchingSettings:
        """These settings with ``max_batch_size`` 0 replaced by ``size``; others are kept."""
        if self.max_batch_size != 0:
            return self
        return replace(self, max_batch_size=size)


DEFAULT_BATCH_SIZE = 4
"""What ``batching.max_batch_size`` 0 means for SigLIP 2's towers on a CPU (on a GPU the size
follows the device's free memory)."""
SAM2_ENCODER_BATCH_SIZE_ON_CPU = 1
"""What ``batching.max_batch_size`` 0 means for SAM 2's image encoder on a CPU: batching off. On
the CPUs measured, one pass over 4 images cost 1.1 to 1.4 times as much per image as single
passes, in imgembed and in Meta's ``sam2`` alike, so batching could only lose throughput there;
SigLIP 2's towers got cheaper per item in batches (benchmarks/RESULTS.md, "Forward pass cost by
batch size" and "Dynamic batching")."""


DECODER_BATCHING = BatchingSettings(max_batch_size=0, max_queue_delay_ms=1.0, max_queue_size=256)
"""Default batching of SAM 2 prompt decoding, where ``max_batch_size`` counts prompts and 0 means
by device: on a GPU by its free memory (``imgembed.runtime.batch_size``: 64 prompts on a 24 GiB
card, 128 on an 80 GiB one), 1 (off) on a CPU, where sharing decoder passes across requests
measured slower than decoding them one by one (benchmarks/RESULTS.md, "SAM 2 decoder
batching")."""


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """How the ONNX Runtime backend runs a SAM 2 encoder (``backend = onnxruntime``).

    Attributes:
        provider: Execution provider (see :data:`OnnxProvider`); on CUDA the encoder's outputs
            stay on the GPU (I/O binding) for the PyTorch decoder.
        gpu_mem_limit: Most bytes the CUDA provider's memory arena may hold, beside PyTorch's own
            allocator on the same GPU; 0 means no limit (ONNX Runtime's default).
        arena_extend_strategy: How the CUDA arena grows: ``kSameAsRequested`` (by what a request
            needs: the least memory) or ``kNextPowerOfTwo`` (ONNX Runtime's default: fewer,
            larger steps, up to twice what is needed).
        cudnn_conv_algo_search: How cuDNN picks convolution algorithms: ``EXHAUSTIVE`` (timed
            once per input shape: the fastest kernels, a slower first batch of each size),
            ``HEURISTIC`` or ``DEFAULT``.
    """

    provider: OnnxProvider = "auto"
    gpu_mem_limit: int = 0
    arena_extend_strategy: ArenaExtendStrategy = "kSameAsRequested"
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve and where its weights come from.

    Attributes:
        name: Canonical model name, for example ``sam2.1-hiera-tiny``.
        weights: ``None`` for the model's default hub repository, ``"dummy"`` for random
            untrained weights, a hub id (``facebook/sam2.1-hiera-tiny``), a local folder in
            Hugging Face format, or a Meta ``.pt`` checkpoint file.
        meta_config: Meta's config name for a ``.pt`` checkpoint (``configs/sam2.1/sam2.1_hiera_t.yaml``,
            ``sam2_hiera_l.yaml``); when ``None`` it follows from ``name``.
        device: Where to run.
        preprocess: Where images are resized and normalised (:data:`PreprocessChoice`); the
            SAM 2 encoder's ONNX Runtime backend takes host input, so it always preprocesses on
            the CPU.
        compute_dtype: The forward passes' precision (see :data:`ComputeDtypeChoice`); SAM 2's
            cached features are held in it.
        alias: Extra name clients may use for this model (the seed's checkpoint file name, say).
        batching: How this model's requests are batched (SAM 2: its image encoder; SigLIP 2:
            its image and text towers).
        decoder_batching: How SAM 2 prompt decoding is batched across requests;
            ``max_batch_size`` counts prompts, and one request's prompts are never split.
        backend: What runs the SAM 2 image encoder; ``onnxruntime`` needs ``onnx_dir`` (the
            prompt decoder always runs in PyTorch).
        onnx_dir: An ``imgembed export onnx`` folder of this model, for the ``onnxruntime``
            backend (its graphs must come from the same weights).
        onnx: ONNX Runtime's provider and CUDA memory options, for the ``onnxruntime`` backend.
        warmup: Run one forward pass of each kind at start-up, before the server reports ready,
            so the first request does not pay for lazy initialisation (kernel selection,
            allocator growth): ``True``, ``False``, or ``auto`` (on a GPU only; see
            :data:`WarmupChoice`).
    """

    name: str
    weights: str | None = None
    meta_config: str | None = None
    device: DeviceChoice = "auto"
    preprocess: PreprocessChoice = "auto"
    compute_dtype: ComputeDtypeChoice = "auto"
    alias: str | None = None
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    decoder_batching: BatchingSettings = DECODER_BATCHING
    backend: Backend = "torch"
    onnx_dir: str | None = None
    onnx: OnnxRuntimeOptions = field(default_factory=OnnxRuntimeOptions)
    warmup: WarmupChoice = "auto"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the engine and HTTP server need.

    Attributes:
        models: Models to load at start-up; the first is the default for requests that name none.
        host: Interface to bind.
        port: TCP port.
        limits: Request size limits.
        fetch: Image URL download policy.
        default_resize_mode: Resize mode used when a request does not choose one.
        compute_threads: Threads for CPU-side work (decode, resize, serialise); 0 (the default)
            chooses one per CPU this process may use (affinity mask and cgroup quota), between
            2 and 32.
        torch_threads: torch's intra-op threads for the forward passes (``torch.set_num_threads``,
            process-wide); 0 keeps torch's default, one per core. On a CPU-only machine fewer
            than the cores measured slower (benchmarks/RESULTS.md, "Thread settings").
        request_timeout_s: Deadline of each request from arrival; work not started by then is
            dropped and the request answered 504.
        api_key: When set, every request outside ``public_paths`` needs
            ``Authorization: Bearer <api_key>``; ``None`` (the default) turns authentication off.
        public_paths: Paths answered without a key even when ``api_key`` is set; an entry ending
            in ``*`` is a prefix (``/ui/static/*``). The browser page's files are public (they
            hold no data); its API calls and the decoder graph (model weights) need the key.
        collections_dir: Where the vector store keeps collections (a folder, or an object-store
            URI LanceDB understands such as ``s3://bucket/prefix``); opened on first use.
        cache_bytes: Budget of the embedding cache per model, in bytes of feature storage (one
            SAM 2 image is 16 MiB in float32, 8 MiB in half precision); 0 turns caching off.
        shutdown_timeout_s: On SIGTERM the server stops accepting connections and waits this long
            for requests in flight to finish before closing them.
        header_timeout_s: Longest time a client may take to send a request's line and headers,
            counted from the connection's opening or the request's first byte; past it the
            server answers 408 and closes the connection.
        body_idle_timeout_s: Longest wait for the next part of a request body; past it 408 and
            the connection is closed.
        body_timeout_s: Longest time a whole request body may take to arrive (a 10 MB photo
            over a 0.5 Mbit/s mobile uplink takes about 160 s); past it 408 and the connection
            is closed.
    """

    models: tuple[ModelSpec, ...] = (ModelSpec(name=DEFAULT_MODEL),)
    host: str = "127.0.0.1"
    port: int = 8000
    limits: InputLimits = field(default_factory=InputLimits)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    default_resize_mode: ResizeMode = "stretch"
    compute_threads: int = 0
    torch_threads: int = 0
    request_timeout_s: float = 120.0
    cache_bytes: int = 1024 * MEBIBYTE
    collections_dir: str = "imgembed-data/collections"
    shutdown_timeout_s: float = 60.0
    header_timeout_s: float = 30.0
    body_idle_timeout_s: float = 30.0
    body_timeout_s: float = 300.0
    api_key: str | None = field(default=None, repr=False)
    public_paths: tuple[str, ...] = (
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/ui",
        "/ui/",
        "/ui/static/*",
        "/ui/vendor/*",
    )
