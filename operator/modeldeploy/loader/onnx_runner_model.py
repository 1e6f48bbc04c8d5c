"""Triton python-backend model that serves `model.onnx` with onnxruntime (the CPU serving image).

The loader copies this file to `<model>/1/model.py`, after a header that puts the runner's
packages on sys.path (the backend stub runs Python in isolated mode and ignores PYTHONPATH).
Triton's dynamic batcher hands `execute` several requests at once: they are concatenated along
the batch axis, run once, and split back, so batching pays off exactly as with a native backend.
A request that cannot be served gets its own error; the others are still answered.

Runs inside the stub, so it imports nothing from modeldeploy: numpy, onnxruntime and
triton_python_backend_utils only.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"


class TritonPythonModel:
    """One onnxruntime session per model instance."""

    def initialize(self, args):  # noqa: ANN001, ANN201 - signature fixed by Triton
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILE)
        options = ort.SessionOptions()
        params = config.get("parameters", {})
        # the native onnxruntime backend's parameter names (deploy-time tuning sets them)
        threads = params.get("intra_op_thread_count", {}).get("string_value", "")
        if threads:
            options.intra_op_num_threads = int(threads)
        inter = params.get("inter_op_thread_count", {}).get("string_value", "")
        if inter:
            options.inter_op_num_threads = int(inter)
        if params.get("execution_mode", {}).get("string_value", "") == "1":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]
        self.input_dtypes = {
            i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]
        }
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }

    def _feed(self, request):  # noqa: ANN001
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
        return feed

    def _run(self, feed):  # noqa: ANN001
        results = self.session.run(self.outputs, feed)
        pairs = zip(self.outputs, results, strict=True)
        return [np.asarray(r).astype(self.output_dtypes[n], copy=False) for n, r in pairs]

    def _response(self, arrays):  # noqa: ANN001
        tensors = [pb_utils.Tensor(n, a) for n, a in zip(self.outputs, arrays, strict=True)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _error(e):  # noqa: ANN001
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"inference failed: {e}"))

    def _run_one(self, feed, run_errors):  # noqa: ANN001
        try:
            return self._response(self._run(feed))
        except Exception as e:  # a bad request must not take the others down
            run_errors.append(e)
            return self._error(e)

    def execute(self, requests):  # noqa: ANN001, ANN201 - signature fixed by Triton
        """Answer each request; raise when every one failed and the model itself was at fault.

        Triton 2.51 counts a response that carries an error in nv_inference_request_success; only an
        exception raised from execute() counts in nv_inference_request_failure. Raising when no request
        could be answered (and at least one failed inside the model, not on its input) makes a broken
        model visible to canary analysis without ever failing a request that had an answer.
        """
        run_errors = []
        responses = self._answer(requests, run_errors)
        if run_errors and all(r.has_error() for r in responses):
            raise RuntimeError(f"inference failed: {run_errors[0]}")
        return responses

    def _answer(self, requests, run_errors):  # noqa: ANN001
        responses = [None] * len(requests)
        feeds = {}
        for i, request in enumerate(requests):
            try:
                feeds[i] = self._feed(request)
            except Exception as e:
                responses[i] = self._error(e)
        if not feeds:
            return responses
        if not self.batching or len(feeds) == 1 or not self._same_sample_shapes(feeds.values()):
            for i, feed in feeds.items():
                responses[i] = self._run_one(feed, run_errors)
            return responses
        order = list(feeds)
        sizes = [len(feeds[i][self.inputs[0]]) for i in order]
        try:
            merged = {n: np.concatenate([feeds[i][n] for i in order], axis=0) for n in self.inputs}
            outputs = self._run(merged)
        except Exception:  # find out which request is at fault: run them one by one
            for i in order:
                responses[i] = self._run_one(feeds[i], run_errors)
            return responses
        bounds = np.cumsum(sizes)[:-1]
        parts = [np.split(o, bounds, axis=0) for o in outputs]
        for k, i in enumerate(order):
            responses[i] = self._response([p[k] for p in parts])
        return responses

    def _same_sample_shapes(self, feeds):  # noqa: ANN001
        """Requests can be concatenated only if their per-sample shapes agree (variable dims may differ)."""
        shapes = {tuple((n, a.shape[1:]) for n, a in feed.items()) for feed in feeds}
        return len(shapes) == 1

    def finalize(self):  # noqa: ANN201 - signature fixed by Triton
        self.session = None
