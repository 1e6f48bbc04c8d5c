"""A digits "new version" that goes wrong on purpose: fails a share of requests, or answers slowly,
or answers with class 0. A Triton python model with the real digits model's inputs and outputs."""

from __future__ import annotations

import io
import tarfile

# A "new version" that answers most requests but fails a share of them, or answers slowly.
MODEL_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

FAIL_EVERY = {fail_every}
DELAY_S = {delay}


class TritonPythonModel:
    def initialize(self, args):
        self.n = 0

    def execute(self, requests):
        out = []
        for r in requests:
            self.n += 1
            if DELAY_S:
                time.sleep(DELAY_S)
            if FAIL_EVERY and self.n % FAIL_EVERY == 0:
                # Raised, not returned: Triton counts only a raised error as a failed request.
                raise pb_utils.TritonModelException("injected failure")
            x = pb_utils.get_input_tensor_by_name(r, "input_0").as_numpy()
            y = np.zeros((x.shape[0], 10), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("output_0", y)]))
        return out
'''

CONFIG = '''name: "digits"
backend: "python"
max_batch_size: 32
input [ { name: "input_0" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] } ]
output [ { name: "output_0" data_type: TYPE_FP32 dims: [ 10 ] } ]
'''


def bad_digits_tarball(fail_every: int = 0, delay: float = 0.0) -> bytes:
    """The model as a .tar.gz the loader takes with `format: python`: fails every `fail_every`-th
    request (0: none), sleeps `delay` seconds per request, always answers class 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in {"digits/config.pbtxt": CONFIG,
                           "digits/1/model.py": MODEL_PY.format(fail_every=fail_every, delay=delay)}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
