"""One benchmark measurement in a fresh process: ``python -m edgetl.benchmarking.worker SPEC.json``.

:mod:`edgetl.benchmarking` starts one of these per configuration and repetition, so that peak
resident memory and cold start belong to that configuration alone. The worker prints
one line ``EDGETL_BENCH {json}`` on stdout and exits 0, also when the configuration
is skipped or fails (the line then says why).

Every row that is not the PyTorch one runs with torch blocked (``sys.modules["torch"] =
None``), as on a device install: ``import onnxruntime`` otherwise imports torch when it is
installed, which adds ~700 MB of resident memory and seconds of start-up that a device
never pays.

What is timed is one call of the model path, image tensor in, logits out, on a batch
already preprocessed (preprocessing excluded): ``Predictor.logits`` for edgetl rows,
the runtime's own calls on the same files for direct rows, ``model(x)`` under
``torch.inference_mode()`` for the PyTorch eager row.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

MARK = "EDGETL_BENCH "
N_INPUTS = 4  # distinct batches cycled through while timing
MIN_ITERATIONS = 5


class Skip(Exception):
    """The configuration cannot run here (runtime or torch absent, device not offered)."""


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    On Linux, VmHWM (the high-water mark of this process's own memory map) and not
    ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``fork`` + ``exec``, so a worker started
    by a parent holding 800 MB would report at least 800 MB whatever it loads.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# --- runners: each returns (callable x -> logits, precision executed) ---------------------------

def _torch_runner(spec: dict[str, Any]):
    import torch

    from edgetl.workstation.run import load_run

    torch.set_num_threads(int(spec["threads"]))
    loaded = load_run(spec["run"])
    model = loaded.model.eval()
    names = [i.name for i in _modality(spec).inputs(_spec(spec))]

    task = _task(spec)
    if not task.pooled:  # detection, NER: the network, then the same numpy decoding as the device
        pre = _spec(spec)

        def run(x):
            with torch.inference_mode():
                raw = model(*(torch.from_numpy(x[n]) for n in names))
            raw = tuple(r.numpy() for r in raw) if isinstance(raw, (tuple, list)) else raw.numpy()
            return task.bench_decode(task.bench_outputs(raw, x, pre), pre)
    else:
        def run(x):
            with torch.inference_mode():
                return model(*(torch.from_numpy(x[n]) for n in names)).numpy()

    run.files = [str(f) for f in loaded.weight_files]  # what size_mb counts: a head-only RUN's installed backbone too
    return run, "fp32"


def _predictor_runner(spec: dict[str, Any]):
    from edgetl.device.predictor import Adapter, Predictor
    from edgetl.runtimes import load_session

    if spec.get("bundle") and not spec.get("device"):
        # the deployed path, as `edgetl predict` takes it (hashes verified)
        # fed tensors, like the direct runner: ONNX Runtime's default (spinning) on both sides
        # (its conformance set runs after the timing: see measure)
        predictor = Predictor.from_bundle(spec["bundle"], runtime=spec["runtime"], threads=spec["threads"],
                                          spinning=True, conformance="off")
    else:
        if not _task(spec).pooled:
            raise Skip(f"a {_task(spec).name} model is timed as a bundle (its box head and decoding travel with it): "
                       "'edgetl package RUN --target T --out BUNDLE', then 'edgetl bench BUNDLE --run RUN'")
        kw = dict(threads=spec["threads"], device=spec.get("device") or None)
        backbone = load_session(spec["backbone"], spec["runtime"], precision=spec["precision"], **kw)
        head = load_session(spec["head"], spec["runtime"], precision="fp32", **kw)
        adapter = Adapter.load(spec["adapter"]) if spec.get("adapter") else None
        predictor = Predictor(backbone, head, spec["labels"], _spec(spec), adapter=adapter,
                              modality=spec.get("modality"))

    if predictor.task.pooled:
        def run(x):
            return predictor.logits(x)
    else:  # the head's outputs as the task makes them, decoded as `edgetl predict` does (NMS included)
        def run(x):
            out = predictor.task.outputs(predictor, predictor.backbone.run(x), x, predictor.head, predictor.extra_heads)
            return predictor.task.bench_decode(out, predictor.spec)

    run.predictor = predictor  # type: ignore[attr-defined]
    return run, predictor.precision_executed


def _direct_runner(spec: dict[str, Any]):
    """The runtime's own API on the same files and settings, with no edgetl code in the loop."""
    import numpy as np

    if not _task(spec).pooled:
        raise Skip(f"--direct times a classifier's two files; a {_task(spec).name} bundle is timed as deployed")
    threads, runtime = int(spec["threads"]), spec["runtime"]
    post = None
    if spec.get("adapter"):
        from edgetl.device.predictor import Adapter

        adapter = Adapter.load(spec["adapter"])
        at, b = np.ascontiguousarray(adapter.A.T), adapter.b
        post = lambda z: z @ at + b  # noqa: E731
    if runtime == "onnxruntime":
        import onnxruntime as ort

        from edgetl.runtimes.ort import is_quantized

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        provider = [spec.get("device") or "CPUExecutionProvider"]
        bb = ort.InferenceSession(spec["backbone"], options, providers=provider)
        hd = ort.InferenceSession(spec["head"], options, providers=provider)
        h_in = hd.get_inputs()[0].name

        def run(x):
            z = bb.run(None, x)[0]
            return hd.run(None, {h_in: post(z) if post else z})[0]

        return run, "int8" if is_quantized(Path(spec["backbone"])) else "fp32"
    import openvino as ov

    from edgetl.runtimes.ov import executed_precision

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "bf16" if spec["precision"] == "bf16" else "f32"}
    device = spec.get("device") or "CPU"
    cb = core.compile_model(spec["backbone"], device, config)
    ch = core.compile_model(spec["head"], device, {**config, "INFERENCE_PRECISION_HINT": "f32"})
    rb, rh = cb.create_infer_request(), ch.create_infer_request()
    ob, oh = cb.output(0), ch.output(0)

    def run(x):
        z = rb.infer(x, share_inputs=True)[ob]
        return rh.infer({0: post(z) if post else z}, share_inputs=True)[oh]

    return run, executed_precision(cb)


def _model_runner(spec: dict[str, Any]):
    from edgetl.runtimes import load_session

    from edgetl.errors import ConfigError

    session = load_session(spec["model"], spec["runtime"], threads=spec["threads"], precision=spec["precision"],
                           device=spec.get("device") or None)
    shape = session.input_shape
    if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
        raise ConfigError(f"{spec['model']}: input shape {list(shape)} is not [N, 3, S, S] with a fixed S")
    spec["input_size"] = shape[2]  # a bare model file: its own input shape says the size
    return session.run, session.precision_executed


RUNNERS: dict[str, Callable[[dict[str, Any]], tuple[Callable, str]]] = {
    "torch": _torch_runner, "edgetl": _predictor_runner, "direct": _direct_runner, "model": _model_runner,
}


# --- inputs ---------------------------------------------------------------------------------

def _task(spec: dict[str, Any]):
    from edgetl.tasks import get_task

    return get_task(spec.get("task"))


def _modality(spec: dict[str, Any]):
    from edgetl.modalities import get_modality

    return get_modality(spec.get("modality"))


def _spec(spec: dict[str, Any]):
    """The modality's spec; a bare model file has none but its input size (an image model)."""
    from edgetl.modalities.image import PreprocessSpec

    if spec.get("preprocess"):
        return _modality(spec).spec_from_dict(spec["preprocess"])
    return PreprocessSpec(input_size=int(spec["input_size"]))


def _items(spec: dict[str, Any], start: int, count: int):
    """Model inputs and labels of the data items ``start:start + count``."""
    import numpy as np

    from edgetl.modalities import load_all

    items = spec["images"][start:start + count]
    x = load_all(_modality(spec), [item for item, _ in items], _spec(spec))
    return x, np.asarray([label for _, label in items], dtype=np.int64)


def _padded(x: dict, batch: int) -> dict:
    """``x`` with its rows repeated up to ``batch`` (a fixed-batch model takes no other size)."""
    from edgetl.modalities import concat, count, take

    while count(x) < batch:
        x = concat([x, take(x, slice(batch - count(x)))])
    return x


def _timing_inputs(spec: dict[str, Any]) -> list:
    batch = int(spec["batch"])
    if spec.get("images"):
        n = len(spec["images"])
        return [_padded(_items(spec, (i * batch) % n, batch)[0], batch) for i in range(N_INPUTS)]
    # latency does not depend on the values
    return [_modality(spec).example(_spec(spec), batch) for _ in range(N_INPUTS)]


def _accuracy(run: Callable, spec: dict[str, Any]) -> tuple[float, int]:
    import numpy as np

    from edgetl.modalities import count

    batch, n, correct = int(spec["batch"]), len(spec["images"]), 0
    for start in range(0, n, batch):
        x, y = _items(spec, start, batch)
        k = count(x)
        correct += int((np.asarray(run(_padded(x, batch)))[:k].argmax(1) == y).sum())
    return correct / n, n


# --- the measurement ---------------------------------------------------------------------

def _time(run: Callable, inputs: list, spec: dict[str, Any]) -> list[float]:
    for i in range(int(spec["warmup"])):
        run(inputs[i % len(inputs)])
    latencies: list[float] = []
    iterations, duration = spec.get("iterations"), spec.get("duration")
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # a collection inside one timed call would be charged to that configuration
    try:
        if iterations:
            for i in range(int(iterations)):
                t = clock()
                run(inputs[i % len(inputs)])
                latencies.append((clock() - t) / 1e6)
        else:
            end = clock() + float(duration) * 1e9
            i = 0
            while clock() < end or i < MIN_ITERATIONS:
                t = clock()
                run(inputs[i % len(inputs)])
                latencies.append((clock() - t) / 1e6)
                i += 1
    finally:
        gc.enable()
    return latencies


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    kind = spec["kind"]
    if kind != "torch":
        sys.modules["torch"] = None  # type: ignore[assignment]  # a device has no torch; see the docstring
    t0 = time.perf_counter()
    try:
        if kind == "torch":
            import torch  # noqa: F401
        else:
            __import__({"onnxruntime": "onnxruntime", "openvino": "openvino"}[spec["runtime"]])
    except ImportError as exc:
        what = "torch" if kind == "torch" else spec["runtime"]
        hint = "pip install 'edgetl[train]'" if kind == "torch" else (
            "pip install onnxruntime-training-cpu==1.19.2" if spec["runtime"] == "onnxruntime" else "pip install openvino")
        raise Skip(f"{what} is not installed here ({exc}); {hint}") from None
    import_ms = (time.perf_counter() - t0) * 1e3
    if spec.get("target"):
        from edgetl.core.targets import Target

        ok, why = Target.from_dict(spec["target"]).runtime_available()
        if not ok:
            raise Skip(f"target {spec['target']['name']!r}: {why}")

    inputs = _timing_inputs(spec) if spec.get("input_size") or spec.get("preprocess") else None
    t0 = time.perf_counter()
    run, precision_executed = RUNNERS[kind](spec)
    load_ms = (time.perf_counter() - t0) * 1e3
    if inputs is None:  # a bare model file: the runner read the size from the model
        inputs = _timing_inputs(spec)
    t1 = time.perf_counter()
    out = np.asarray(run(inputs[0]))
    first_ms = (time.perf_counter() - t1) * 1e3
    if out.shape[0] != int(spec["batch"]):
        raise RuntimeError(f"the model returned {out.shape[0]} rows for a batch of {spec['batch']}")

    lat = np.asarray(_time(run, inputs, spec))
    peak = _peak_rss_mb()  # before the accuracy pass, which reads every image
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    result: dict[str, Any] = {
        "status": "ok",
        "precision_executed": precision_executed,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(lat.mean()),
        "min_ms": float(lat.min()),
        "throughput": float(int(spec["batch"]) * len(lat) / (lat.sum() / 1e3)),
        "iterations": int(len(lat)),
        "peak_rss_mb": peak,
        "import_ms": import_ms, "load_ms": load_ms, "first_inference_ms": first_ms,
        "cold_start_ms": load_ms + first_ms,
        "accuracy": None, "accuracy_n": None,
    }
    if getattr(run, "files", None):
        result["files"] = run.files
    if spec.get("images") and spec.get("accuracy") and _task(spec).pooled:  # top-1: classification's
        result["accuracy"], result["accuracy_n"] = _accuracy(run, spec)
    result["conformance"] = _conformance(run)
    return result


def _conformance(run: Callable) -> dict[str, Any] | None:
    """A deployed bundle's conformance check on this CPU and runtime (after the timing, so that
    it is not charged to the cold start); None for rows that are not a bundle's."""
    predictor = getattr(run, "predictor", None)
    if predictor is None or predictor.bundle is None:
        return None
    from edgetl.device.conformance import check

    report = check(predictor)
    if report is None:
        return {"passed": None, "reason": "the bundle carries no conformance set"}
    return {"passed": report.passed, "agreement": report.agreement, "items": report.n_items,
            "max_logit_error": report.max_logit_error}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        result = measure(spec)
    except Skip as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported as the row's error; the benchmark goes on
        from edgetl.errors import EdgeTLError, RuntimeUnavailableError

        if isinstance(exc, RuntimeUnavailableError):
            result = {"status": "skipped", "reason": str(exc)}
        else:
            if not isinstance(exc, EdgeTLError):
                traceback.print_exc()
            text = str(exc).strip().splitlines()
            result = {"status": "error", "reason": f"{exc.__class__.__name__}: {text[0] if text else ''}"}
    sys.stdout.write(MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
