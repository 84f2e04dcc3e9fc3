"""Execution engines on the tiny model: agreement with the exact path, the model cache, fallbacks, options."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from medsam.errors import BackendUnavailableError
from medsam.inference.engines import ExecutionOptions, ModelCache, OptionsError, make_engines, make_predictor
from medsam.inference.engines import options as options_module
from medsam.inference.engines.base import import_engine

ENGINES = [
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not options_module.engine_installed("onnxruntime"), reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not options_module.engine_installed("openvino"), reason="openvino not installed")),
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    return ModelCache(tmp_path / "cache")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the agreement tests, so each graph is exported once per test module."""
    return ModelCache(tmp_path_factory.mktemp("model_cache"))


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _reference(model, x):
    with torch.inference_mode():
        emb = model.encode(x)
        boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [1.0, 2.0, 30.0, 30.0]])
        logits, iou = model.decode(emb[:1], boxes=boxes)
    return emb, boxes, logits, iou


def test_options_validate_and_resolve(monkeypatch):
    with pytest.raises(OptionsError, match="precision 'fp16'"):
        ExecutionOptions(precision="fp16")
    with pytest.raises(OptionsError, match="backend"):
        ExecutionOptions(backend="tensorrt")
    with pytest.raises(OptionsError, match="threads"):
        ExecutionOptions(threads=0)
    assert ExecutionOptions.exact().is_exact
    monkeypatch.setattr(options_module, "engine_installed", lambda name: name == "onnxruntime")
    resolved = ExecutionOptions().resolve("cpu")
    assert (resolved.backend, resolved.precision) == ("onnxruntime", "fp32") and resolved.threads >= 1
    assert ExecutionOptions().resolve("cuda:0").backend == "torch"
    assert ExecutionOptions("bf16", "openvino", 3).resolve("cpu") == ExecutionOptions("bf16", "openvino", 3, "bf16")
    assert ExecutionOptions("int8", "openvino", 3).resolve("cpu").decoder_precision == "fp32"
    assert resolved.decoder_precision == "fp32"  # onnxruntime has no bf16
    monkeypatch.setattr(options_module, "engine_installed", lambda name: True)
    for native in (True, False):  # the default keeps the exact masks: fp32 throughout, bf16 CPU or not
        monkeypatch.setattr(options_module, "cpu_has_native_bf16", lambda native=native: native)
        auto = ExecutionOptions().resolve("cpu")
        assert (auto.backend, auto.precision, auto.decoder_precision) == ("openvino", "fp32", "fp32")
    assert ExecutionOptions(decoder_precision="bf16").resolve("cpu").decoder_precision == "bf16"
    assert not ExecutionOptions("fp32", "torch", decoder_precision="bf16").is_exact
    with pytest.raises(OptionsError, match="decoder_precision"):
        ExecutionOptions(decoder_precision="int8")


def test_exact_path_is_the_model_itself(tiny_lite, cache):
    engines = make_engines(tiny_lite, ExecutionOptions("fp32", "torch"), cache=cache)
    assert engines.is_exact and engines.encoder == tiny_lite.encode and engines.decoder == tiny_lite.decode
    predictor = make_predictor(tiny_lite, ExecutionOptions.exact(), cache=cache)
    assert predictor._encoder == tiny_lite.encode and predictor._decoder == tiny_lite.decode
    assert cache.builds == 0


def test_inference_copy_agrees_and_leaves_the_model_alone(tiny_lite, inputs):
    from medsam.models.optimize import inference_copy

    before = {k: v.clone() for k, v in tiny_lite.state_dict().items()}
    fast = inference_copy(tiny_lite)
    emb, boxes, logits, _ = _reference(tiny_lite, inputs)
    with torch.inference_mode():
        assert _rel(fast.encode(inputs), emb) < 1e-5
        assert torch.allclose(fast.decode(emb[:1], boxes=boxes)[0], logits, atol=1e-5)
    after = tiny_lite.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_torch_bf16_agrees(tiny_lite, inputs, shared_cache):
    emb, boxes, logits, _ = _reference(tiny_lite, inputs)
    engines = make_engines(tiny_lite, ExecutionOptions("bf16", "torch"), cache=shared_cache)
    out = engines.encoder(inputs)
    assert out.dtype == torch.float32 and out.shape == emb.shape
    assert _rel(out, emb) < 0.05
    assert torch.allclose(engines.decoder(emb[:1], boxes=boxes)[0], logits, atol=1e-4)


@pytest.mark.parametrize("backend", ENGINES)
def test_onnx_engines_fp32_match_torch(tiny_lite, inputs, shared_cache, backend):
    emb, boxes, logits, iou = _reference(tiny_lite, inputs)
    engines = make_engines(tiny_lite, ExecutionOptions("fp32", backend), cache=shared_cache)
    assert not engines.fallback and engines.options.backend == backend
    assert _rel(engines.encoder(inputs), emb) < 1e-5  # dynamic batch: 3 images in one call
    assert _rel(engines.encoder(inputs[:1]), emb[:1]) < 1e-5
    out_logits, out_iou = engines.decoder(emb[:1], boxes=boxes)  # one embedding shared by two prompts
    assert out_logits.shape == logits.shape
    assert torch.allclose(out_logits, logits, atol=1e-4) and torch.allclose(out_iou, iou, atol=1e-4)
    # points (a dynamic token count), mask prompts and multimask output go through the same graph
    points, labels = torch.tensor([[[20.0, 20.0], [30.0, 35.0], [2.0, 2.0]]]), torch.tensor([[1, 1, 0]])
    mask_in = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        ref = tiny_lite.decode(emb[1:2], points=points, point_labels=labels, mask_input=mask_in, multimask=True)
    got = engines.decoder(emb[1:2], points=points, point_labels=labels, mask_input=mask_in, multimask=True)
    assert got[0].shape == ref[0].shape == (1, 3, 64, 64)
    assert torch.allclose(got[0], ref[0], atol=1e-4)


@pytest.mark.parametrize("backend", ENGINES)
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_onnx_engines_low_precision_stay_close(tiny_lite, inputs, shared_cache, backend, precision):
    emb, boxes, logits, _ = _reference(tiny_lite, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # onnxruntime bf16 -> fp32 note
        engines = make_engines(tiny_lite, ExecutionOptions(precision, backend), cache=shared_cache)
    out = engines.encoder(inputs)
    assert torch.isfinite(out).all()
    assert _rel(out, emb) < 0.1
    assert torch.allclose(engines.decoder(emb[:1], boxes=boxes)[0], logits, atol=1e-3)


@pytest.mark.skipif(not options_module.engine_installed("onnxruntime"), reason="onnxruntime not installed")
def test_cache_is_reused_and_rebuilt_when_stale(tiny_lite, tmp_path):
    backend = "onnxruntime"  # the cache logic is the same for every engine
    root = tmp_path / "models"
    first = ModelCache(root)
    make_engines(tiny_lite, ExecutionOptions("fp32", backend), cache=first)
    assert first.builds == 2  # encoder and decoder graphs
    stamps = sorted(root.glob("*.json"))
    assert [p.name for p in stamps] == ["tiny_lite-decoder-fp32.json", "tiny_lite-encoder-fp32.json"]
    stamp = json.loads(stamps[1].read_text())
    assert stamp["fingerprint"] and stamp["opset"] == 17 and stamp["versions"]["torch"] == torch.__version__
    assert not list(root.glob(".*part*"))  # no temporary files left

    again = ModelCache(root)
    make_engines(tiny_lite, ExecutionOptions("fp32", backend), cache=again)
    assert again.builds == 0

    stamp["versions"]["torch"] = "0.0.1"  # built by another torch: stale
    stamps[1].write_text(json.dumps(stamp))
    stale = ModelCache(root)
    make_engines(tiny_lite, ExecutionOptions("fp32", backend), cache=stale)
    assert stale.builds == 1 and json.loads(stamps[1].read_text())["versions"]["torch"] == torch.__version__


def test_cache_rebuilds_for_other_weights(tmp_path):
    from medsam.inference.engines.exports import stamp_for
    from medsam.models.registry import build_model

    a, b = build_model("tiny_lite"), build_model("tiny_lite")
    with torch.no_grad():
        b.mask_decoder.iou_token.weight.add_(1.0)
    assert stamp_for(a, "decoder", "fp32") != stamp_for(b, "decoder", "fp32")
    cache = ModelCache(tmp_path)
    built = []
    cache.get_or_build(stamp_for(a, "decoder", "fp32"), lambda p: built.append(p) or p.write_bytes(b"a"))
    cache.get_or_build(stamp_for(a, "decoder", "fp32"), lambda p: built.append(p) or p.write_bytes(b"a"))
    cache.get_or_build(stamp_for(b, "decoder", "fp32"), lambda p: built.append(p) or p.write_bytes(b"b"))
    assert len(built) == 2 and cache.path_for(stamp_for(b, "decoder", "fp32")).read_bytes() == b"b"


def test_failed_build_leaves_nothing(tmp_path):
    from medsam.inference.engines.model_cache import BuildStamp

    cache = ModelCache(tmp_path)
    stamp = BuildStamp("m", "f", "encoder", "fp32", 17)

    def broken(path):
        path.write_bytes(b"half")
        raise BackendUnavailableError("export failed")

    with pytest.raises(BackendUnavailableError):
        cache.get_or_build(stamp, broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_missing_engine_warns_and_falls_back_to_torch(tiny_lite, cache, monkeypatch, backend, disc_image):
    monkeypatch.setitem(sys.modules, backend, None)  # makes `import backend` fail as if not installed
    with pytest.raises(BackendUnavailableError, match=rf"{backend} engine is not installed.*pip install"):
        import_engine(backend)
    with pytest.warns(RuntimeWarning, match=rf"{backend} engine is not installed.*running on torch bf16"):
        predictor = make_predictor(tiny_lite, ExecutionOptions("bf16", backend), cache=cache)
    predictor.set_image(disc_image)
    assert predictor.predict(boxes=[40, 20, 80, 60]).masks.shape == (1, 1, 96, 128)
    with pytest.warns(RuntimeWarning, match="not installed"):
        engines = make_engines(tiny_lite, ExecutionOptions("fp32", backend), cache=cache)
    assert engines.is_exact and engines.options.backend == "torch"
    assert cache.builds == 0


def test_auto_without_engines_runs_torch(tiny_lite, cache, monkeypatch):
    monkeypatch.setattr(options_module, "engine_installed", lambda name: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto picks what is there: no warning
        engines = make_engines(tiny_lite, ExecutionOptions(), cache=cache)
    assert engines.options.backend == "torch"


def test_predictor_signature_depends_on_engine(tiny_lite, cache, disc_image):
    exact = make_predictor(tiny_lite, ExecutionOptions.exact(), cache=cache)
    fast = make_predictor(tiny_lite, ExecutionOptions("bf16", "torch"), cache=cache)
    assert exact.prepare(disc_image).signature != fast.prepare(disc_image).signature
    fast.set_image(disc_image)
    exact.set_image(disc_image)
    a = fast.predict(boxes=[40, 20, 80, 60]).masks
    b = exact.predict(boxes=[40, 20, 80, 60]).masks
    assert a.shape == b.shape


def test_cli_flags_parse_and_run(tmp_path, monkeypatch, disc_image):
    from PIL import Image

    from medsam.cli import build_parser, main

    args = build_parser().parse_args(["segment", "x.png", "--box", "1,2,3,4", "-o", "y.png",
                                      "--precision", "bf16", "--backend", "openvino", "--threads", "2"])
    assert (args.precision, args.backend, args.threads) == ("bf16", "openvino", 2)
    defaults = build_parser().parse_args(["segment", "x.png", "-o", "y.png"])
    assert (defaults.precision, defaults.backend, defaults.threads) == ("auto", "auto", None)
    for bad in (["--precision", "fp16"], ["--backend", "tensorrt"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["segment", "x.png", "-o", "y.png", *bad])

    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    image = tmp_path / "disc.png"
    Image.fromarray(disc_image).save(image)
    out = tmp_path / "mask.png"
    rc = main(["segment", str(image), "--box", "40,20,80,60", "-o", str(out), "--model", "tiny_lite",
               "--precision", "bf16", "--backend", "torch", "--threads", "1"])
    assert rc == 0 and np.asarray(Image.open(out)).shape == (96, 128)
