"""One SAM 2.1 tiny export per test session, shared by every export test.

Weights: Meta's model with seeded random weights (every tensor noised, so no weight hides a
mapping mistake), saved as Meta's ``.pt`` and loaded by ``load_sam2``, as a user's checkpoint is.
The float32 export is traced once (the slow part: about a minute on 2 cores); the fp16 and int8
variants and the Triton repositories are derived from it without tracing again. The same for
SigLIP 2: a small FixRes model of the real design, saved in the Hugging Face format and exported
once (image and text graphs, a few seconds).
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import torch
from checkpoints import SEED, build_meta_model, save_meta_checkpoint
from imagefactory import gradient_rgb
from siglip_checkpoints import TINY_FIXRES, build_siglip_model, save_siglip_folder

from imgembed.export.onnx_export import ExportResult, convert_precision, export_loaded_onnx
from imgembed.export.siglip_onnx import SiglipExportResult, export_loaded_siglip_onnx
from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.preprocess.sam2_frame import sam2_pixel_values

TINY = resolve_variant("sam2.1-hiera-tiny")
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta's ``sam2.1_hiera_tiny.pt`` with seeded random weights."""
    meta_model = build_meta_model(TINY.meta_config, SEED)
    folder = tmp_path_factory.mktemp("export_weights")
    return save_meta_checkpoint(meta_model, folder / TINY.meta_checkpoint)


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint: Path) -> LoadedSam2:
    """The same weights loaded by imgembed, on the CPU."""
    return load_sam2(TINY.name, str(tiny_checkpoint), device=CPU)


@pytest.fixture(scope="session")
def onnx_export(tiny: LoadedSam2, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The float32 export (encoder, decoder, single-mask decoder, metadata)."""
    return export_loaded_onnx(tiny, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="session")
def fp16_export(
    onnx_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    return convert_precision(onnx_export.out_dir, tmp_path_factory.mktemp("onnx") / "fp16", "fp16")


@pytest.fixture(scope="session")
def int8_export(
    onnx_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    return convert_precision(onnx_export.out_dir, tmp_path_factory.mktemp("onnx") / "int8", "int8")


@pytest.fixture(scope="session")
def image_batch() -> torch.Tensor:
    """``[3,3,1024,1024]`` preprocessed images: a gradient (a photo stand-in), then two of noise."""
    gradient, _ = sam2_pixel_values(torch.from_numpy(gradient_rgb(480, 640)), 1024, "stretch")
    noise = torch.randn((2, 3, 1024, 1024), generator=torch.Generator().manual_seed(SEED))
    return torch.cat([gradient[None], noise])  # [1,3,H,W] + [2,3,H,W] -> [3,3,H,W]


@pytest.fixture(scope="session")
def torch_features(tiny: LoadedSam2, image_batch: torch.Tensor) -> Sam2Features:
    """imgembed's PyTorch features of the gradient image."""
    return encode_images(tiny.model, image_batch[:1])


@pytest.fixture(scope="session")
def onnx_features(onnx_export: ExportResult, image_batch: torch.Tensor) -> Sam2Features:
    """The exported encoder's features of the gradient image, on ONNX Runtime's CPU provider."""
    from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend

    backend = OnnxSam2Backend(onnx_export, OnnxRuntimeSettings(provider="cpu"))
    return backend.encode(image_batch[:1])


@pytest.fixture(scope="session")
def triton_model_config() -> ModuleType:
    """Triton's own ``model_config_pb2`` (generated from Triton's ``model_config.proto``).

    ``tritonclient`` ships it in ``tritonclient/grpc/``, but importing ``tritonclient.grpc`` needs
    the ``grpc`` extra (grpcio, which would pin an older protobuf); the generated module itself
    needs only protobuf, so it is loaded from its file.
    """
    tritonclient = pytest.importorskip("tritonclient", reason="tritonclient is a test extra")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.fail(f"tritonclient {tritonclient.__file__} ships no grpc/model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def siglip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small FixRes SigLIP 2 model of the real design with seeded random weights, saved as
    ``save_pretrained`` writes it (config, safetensors, Gemma-class tokenizer, processor)."""
    model = build_siglip_model(TINY_FIXRES)
    return save_siglip_folder(model, TINY_FIXRES, tmp_path_factory.mktemp("siglip_weights"))


@pytest.fixture(scope="session")
def siglip_loaded(siglip_folder: Path) -> LoadedSiglip:
    """Those weights loaded by imgembed, on the CPU."""
    return load_siglip(TINY_FIXRES, str(siglip_folder), device=CPU)


@pytest.fixture(scope="session")
def siglip_export(
    siglip_loaded: LoadedSiglip, tmp_path_factory: pytest.TempPathFactory
) -> SiglipExportResult:
    """The SigLIP ONNX export (image and text graphs, tokenizer.json, settings)."""
    return export_loaded_siglip_onnx(siglip_loaded, tmp_path_factory.mktemp("siglip_onnx"))


TRITON_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "triton_server.sh"


@pytest.fixture(scope="module")
def tritonserver() -> None:
    """Fails (through the skip policy) when scripts/triton_server.sh has not installed Triton."""
    found = subprocess.run(
        [str(TRITON_SCRIPT), "path"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.skip(
            "tritonserver (nvidia-pytriton) is not installed: run scripts/triton_server.sh install"
        )
