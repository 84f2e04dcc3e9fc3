"""The exported ONNX graphs of a model, built once into the model cache and reused while fresh.

- fp32 graphs (encoder, decoder core) are exported from the inference copy by ``medsam.models.export``;
  bf16 runs from the fp32 graph (OpenVINO lowers the precision when it compiles).
- int8 encoder: dynamic quantisation of the linear layers only (int8 weights per output channel, activations
  quantised per call), LayerNorm, softmax, GELU, the attention products, every convolution and the neck kept
  in float. It needs no calibration images. Static int8 of every convolution and matmul, calibrated on real
  images, was tried and destroys the embedding (relative error 0.65-0.92); see benchmarks/speed.py.
"""

from __future__ import annotations

from pathlib import Path

from medsam.errors import BackendUnavailableError
from medsam.inference.cache import model_fingerprint
from medsam.inference.engines.model_cache import BuildStamp, ModelCache, package_versions
from medsam.models.export import GRAPH_VERSION, OPSET, export_decoder, export_encoder

_VERSIONS = ("medsam-toolkit", "torch", "onnx", "onnxruntime", "openvino")


def stamp_for(model, part: str, precision: str) -> BuildStamp:
    return BuildStamp(
        model=model.spec.name, fingerprint=model_fingerprint(model), part=part, precision=precision,
        opset=OPSET, graph_version=GRAPH_VERSION, versions=package_versions(*_VERSIONS),
    )


def _guarded(build, what: str):
    def run(path: Path) -> None:
        try:
            build(path)
        except (ImportError, RuntimeError, ValueError) as exc:
            raise BackendUnavailableError(f"the {what} could not be exported to ONNX ({type(exc).__name__}: {exc})") from exc

    return run


def exported_encoder(model, precision: str, backend: str, cache: ModelCache) -> Path:
    """Path of the encoder graph for ``precision`` (int8: quantised; fp32 and bf16 share the fp32 graph)."""
    fp32 = cache.get_or_build(stamp_for(model, "encoder", "fp32"), _guarded(lambda p: export_encoder(model, p), "image encoder"))
    if precision != "int8":
        return fp32
    # "int8-rr": weights quantised with a reduced range (7 bits); stamped apart from the full-range graphs of before
    return cache.get_or_build(stamp_for(model, "encoder", "int8-rr"), _guarded(lambda p: quantize_linear_layers(fp32, p), "int8 encoder"))


def exported_decoder(model, cache: ModelCache) -> Path:
    return cache.get_or_build(stamp_for(model, "decoder", "fp32"), _guarded(lambda p: export_decoder(model, p), "mask decoder"))


def quantize_linear_layers(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMuls that multiply by a weight (the linear layers) of ``source``.

    Weights use a reduced range (7 bits): onnxruntime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2-only, e.g.
    this AMD EPYC) saturate 16-bit intermediate sums with full-range weights; measured on the tiny test model the
    embedding's relative error was 0.48 with full range and 0.03 with the reduced one.
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendUnavailableError(
            f"int8 needs the onnx and onnxruntime packages ({exc}); pip install 'medsam-toolkit[speed]'"
        ) from exc
    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    linear = [n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights]
    quantize_dynamic(
        str(source), str(target), op_types_to_quantize=["MatMul"], nodes_to_quantize=linear,
        weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
    )
