"""floatadd-torch: upstream float_add's arithmetic, file order and a size check."""
import numpy as np
import pytest
import torch

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.floatadd import float_add, main


def test_library_sum_and_gradient():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    out = float_add([a, b], [2.0, 0.5], offset=1.0, outscale=3.0, outoffset=0.25)
    assert np.allclose(out, 3 * (2 * (a - 1) + 0.5 * (b - 1)) + 0.25)
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    float_add([torch.as_tensor(a), torch.as_tensor(b)], [1.0, s]).sum().backward()
    assert float(s.grad) == pytest.approx(6.0)
    with pytest.raises(ConfigError, match="differ in size"):
        float_add([a, np.ones(5)])


def test_command_upstream_order_and_many_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    imgs = [rng.random(12).astype(np.float32) for _ in range(3)]
    for k, im in enumerate(imgs):
        im.tofile(f"i{k}.bin")
    assert main(["i0.bin", "i1.bin", "sum.bin", "-scale2", "0.5", "-offset", "0.1"]) == 0
    a, b = (x.astype(np.float64) for x in imgs[:2])
    want = (((a - 0.1) + 0.5 * (b - 0.1)) + 0.1).astype(np.float32)
    assert np.array_equal(np.fromfile("sum.bin", "<f4"), want)       # -offset also sets -outoffset
    assert main(["-outfile", "s3.bin", "i0.bin", "i1.bin", "i2.bin", "-scale3", "2"]) == 0
    want = (imgs[0].astype(np.float64) + imgs[1] + 2 * imgs[2].astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.fromfile("s3.bin", "<f4"), want)
    np.zeros(5, np.float32).tofile("short.bin")
    capsys.readouterr()
    assert main(["i0.bin", "short.bin", "bad.bin"]) == 1
    assert "differ in size" in capsys.readouterr().err and not (tmp_path / "bad.bin").exists()
