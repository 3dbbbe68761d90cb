import os

import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU; the variable must
# be set before triton compiles any kernel, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dc_kernels.backends import TABLE, unavailable_reason  # noqa: E402

# Backends that ``auto`` considers for host data and that run here: the API tests run once per
# backend (every backend's steps, Triton's in the interpreter included, are checked by
# test_backend_contract.py).
CPU_BACKENDS = [entry.name for entry in TABLE if "cpu" in entry.devices
                and not unavailable_reason(entry.name, torch.device("cpu"))]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param
