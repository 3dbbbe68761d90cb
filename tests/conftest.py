import os

import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU; the variable must
# be set before triton compiles any kernel, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dc_kernels.backends import unavailable_reason  # noqa: E402

# Backends that run on this machine's CPU: the API tests run once per backend.
CPU_BACKENDS = [name for name in ("torch", "cpu")
                if not unavailable_reason(name, torch.device("cpu"))]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param
