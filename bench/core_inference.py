"""Core inference speed on this CPU: plain prediction vs prediction + Grad-CAM, per architecture.

Prints figures, asserts nothing. Each architecture is saved as a .keras artifact, registered in a
temporary registry and served through the ModelManager exactly as a worker does; the bare
compiled call (tf.function around the same Keras model) is measured in the same run.

    .venv/bin/python bench/core_inference.py [--repeats 20] [--arch mobilenetv2 densenet121]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def timed(fn, *, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def make_registry(folder: Path, arch: str) -> tuple[Path, str]:
    from core.architectures import build_model
    from core.registry import sha256_file

    model = build_model(arch, seed=0)
    artifact = folder / f"{arch}.keras"
    model.save(artifact)
    model_id = f"bench-{arch}"
    entry = {
        "id": model_id,
        "condition": "pneumonia",
        "architecture": arch,
        "input_size": list(model.input_shape[1:3]),
        "class_labels": ["negative", "positive"],
        "threshold": 0.5,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
    }
    path = folder / f"registry-{arch}.json"
    path.write_text(json.dumps({"models": [entry], "active_models": {"pneumonia": model_id}}))
    return path, model_id


def bench_architecture(arch: str, *, repeats: int, folder: Path) -> dict[str, float]:
    import tensorflow as tf

    from core.model_manager import ModelManager

    registry, model_id = make_registry(folder, arch)
    manager = ModelManager(registry)
    loaded = manager.get(condition="pneumonia")
    h, w = loaded.input_size
    cache_s = timed(lambda: manager.get(condition="pneumonia"), repeats=200)

    spec = tf.TensorSpec([None, h, w, 3], tf.float32)
    bare = tf.function(lambda x: loaded.keras_model(x, training=False), input_signature=[spec])
    figures: dict[str, float] = {"cache_ms": cache_s * 1e3}
    for batch in (1, 16):
        x = np.random.default_rng(batch).random((batch, h, w, 3), dtype=np.float32)
        plain = timed(lambda x=x: loaded.predict(x), repeats=repeats)
        both = timed(lambda x=x: loaded.predict_with_gradcam(x), repeats=repeats)
        raw = timed(lambda x=x: bare(x).numpy(), repeats=repeats)
        figures[f"plain_ms_b{batch}"] = plain / batch * 1e3
        figures[f"gradcam_ms_b{batch}"] = both / batch * 1e3
        figures[f"bare_ms_b{batch}"] = raw / batch * 1e3
        figures[f"ratio_b{batch}"] = both / plain
        figures[f"serve_vs_bare_b{batch}"] = plain / raw
    x1 = np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32)
    figures["eager_ms_b1"] = timed(lambda: loaded.keras_model(x1, training=False), repeats=repeats) * 1e3
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--arch", nargs="+", default=["mobilenetv2", "densenet121"])
    args = parser.parse_args()

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            results[arch] = r = bench_architecture(arch, repeats=args.repeats, folder=Path(tmp))
            print(
                f"\n{arch}: model from cache {r['cache_ms']:.4f} ms; eager model(x) at batch 1 "
                f"{r['eager_ms_b1']:.1f} ms"
            )
            print(
                f"  {'batch':>5} {'bare tf.function':>17} {'plain':>9} {'plain/bare':>10} "
                f"{'+Grad-CAM':>10} {'gradcam/plain':>13}   (ms per image)"
            )
            for b in (1, 16):
                print(
                    f"  {b:>5} {r[f'bare_ms_b{b}']:>17.2f} {r[f'plain_ms_b{b}']:>9.2f} "
                    f"{r[f'serve_vs_bare_b{b}']:>10.2f} {r[f'gradcam_ms_b{b}']:>10.2f} "
                    f"{r[f'ratio_b{b}']:>13.2f}"
                )
    print(
        "\ngradcam/plain at batch 1: "
        + " ".join(f"{arch}={results[arch]['ratio_b1']:.2f}" for arch in args.arch)
    )


if __name__ == "__main__":
    main()
