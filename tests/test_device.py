"""The CUDA path: tensors stay on the device and the image equals the CPU's.

Skipped (not passed) where no CUDA device exists.
"""
import numpy as np
import pytest
import torch

from nanobrag_torch import Simulator, config_from_args
from nanobrag_torch.errors import ConfigError

CUDA = torch.cuda.is_available()
ARGS = ("-cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.0 -distance 100 "
        "-pixel 0.1 -detpixels 64 -mosaic 0.5 -mosaic_domains 3 -phi 1 -osc 1 -phisteps 2").split()


def test_cuda_request_without_cuda_is_a_clear_error():
    if CUDA:
        pytest.skip("a CUDA device exists")
    with pytest.raises(ConfigError, match="no CUDA device"):
        Simulator(config_from_args(ARGS), device="cuda")


def test_auto_device_falls_back_to_cpu():
    sim = Simulator(config_from_args(ARGS), device="auto")
    assert sim.device.type == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_image_equals_cpu(dtype):
    cfg = config_from_args(ARGS)
    with torch.no_grad():
        cpu = Simulator(cfg, dtype=dtype).run().pixels
        gpu = Simulator(cfg, dtype=dtype, device="cuda").run().pixels
    assert gpu.device.type == "cuda"
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=0, atol=tol * float(cpu.max()))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_main_loop_tensors_live_on_the_device():
    """AT-PERF-008: everything the kernel reads is a CUDA tensor; the CPU sees only I/O."""
    from nanobrag_torch.compiled import _tensor_leaves
    sim = Simulator(config_from_args(ARGS), device="cuda", compile=False)
    with torch.no_grad():
        result = sim.run()
    image = result.pixels
    assert image.device.type == "cuda"
    leaves = _tensor_leaves(result.setup.plan)
    assert leaves and all(t.device.type == "cuda" for _, t in leaves), \
        [p for p, t in leaves if t.device.type != "cuda"]
