"""The demo's model: a CNN trained on scikit-learn's digits, exported to ONNX, served, queried.

    python hack/demo_digits.py publish --cluster NAME      # train, export, upload to the cluster's S3
    python hack/demo_digits.py infer URL [--count N]        # inference through Triton's HTTP API

No download: scikit-learn ships the 1,797 8x8 images. Training takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "hack")]

MODEL_URI = "s3://models/digits/{version}/model.onnx"
VALIDATION_URI = "s3://models/digits/validation.npz"


def publish(cluster: str, version: str) -> None:
    from localcluster import objectstore
    from localcluster.config import ClusterConfig
    from modeldeploy.loader.convert import convert
    from modeldeploy.loader.settings import InputShape
    from tests.support import serving_digits as sd

    cfg = ClusterConfig(name=cluster)
    store = objectstore.up(cfg)
    data = sd.load_digits()
    began = time.monotonic()
    model = sd.train_cnn(data)
    acc = float((np.asarray(sd.predict(model, data.x_test)).argmax(axis=1) == data.y_test).mean())
    print(f"trained the digits CNN in {time.monotonic() - began:.1f}s: held-out accuracy {acc:.1%}")
    with tempfile.TemporaryDirectory() as tmp:
        ts = sd.save_torchscript(model, Path(tmp) / "model.pt")
        onnx_path = convert(ts, "torchscript", Path(tmp) / "model.onnx", 32,
                            [InputShape("input_0", "float32", (1, 8, 8))])
        store.put(MODEL_URI.format(version=version), onnx_path.read_bytes())
        val = sd.save_validation(data, Path(tmp) / "validation.npz")
        store.put(VALIDATION_URI, val.read_bytes())
    print(f"uploaded {MODEL_URI.format(version=version)} and {VALIDATION_URI} to {store.endpoint}")


def infer(url: str, count: int) -> float:
    import tritonclient.http as httpclient

    from tests.support import serving_digits as sd

    data = sd.load_digits()
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    meta = client.get_model_metadata("digits")
    in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    x, y = data.x_test[:count], data.y_test[:count]
    batch = int(client.get_model_config("digits").get("max_batch_size") or 1)
    began = time.monotonic()
    parts = []
    for i in range(0, len(x), batch):
        inp = httpclient.InferInput(in_name, list(x[i:i + batch].shape), "FP32")
        inp.set_data_from_numpy(x[i:i + batch])
        result = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput(out_name)])
        parts.append(result.as_numpy(out_name))
    took = time.monotonic() - began
    logits = np.concatenate(parts)
    pred = np.asarray(logits).argmax(axis=1)
    acc = float((pred == y).mean())
    print(f"{len(y)} held-out images in {len(parts)} requests of up to {batch} ({took * 1000:.0f} ms): "
          f"accuracy {acc:.1%}")
    print("first predictions:", " ".join(f"{p}({t})" for p, t in zip(pred[:12], y[:12], strict=True)),
          "   as predicted(true)")
    return acc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--cluster", default="modeldeploy")
    p.add_argument("--version", default="1")
    i = sub.add_parser("infer")
    i.add_argument("url")
    i.add_argument("--count", type=int, default=450)
    args = parser.parse_args()
    if args.cmd == "publish":
        publish(args.cluster, args.version)
    else:
        infer(args.url, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
