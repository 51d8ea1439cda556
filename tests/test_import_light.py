"""Importing a command or a light module loads none of the heavy stacks it does not need.

Each case runs in a fresh interpreter (``sys.modules`` of this test process is already full): the
statement to run, then the modules that must not have been imported by it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = {
    "package and CLI": ("import nsfwlab, nsfwlab.cli",
                        ["fastapi", "ray", "matplotlib", "sklearn", "captum", "onnxruntime", "torch", "pdqhash",
                         "nsfwlab.bank", "nsfwlab.train", "nsfwlab.evaluate"]),
    "scan and its command": ("import nsfwlab.scan, nsfwlab.cli.scan",
                             ["ray", "pyarrow", "torchvision", "torch", "onnxruntime"]),
    "explain options": ("import nsfwlab.cli, nsfwlab.explain.options", ["torch", "matplotlib", "captum"]),
    "review store without the web stack": ("import nsfwlab.serve; nsfwlab.serve.ReviewStore",
                                           ["fastapi", "starlette", "uvicorn", "prometheus_client"]),
    "architecture table in the core": (
        "import nsfwlab.checkpoint as ck; assert {'open_nsfw', 'vgg16'} <= set(ck.ARCHITECTURES); "
        "assert 'torch' not in sys.modules; m = ck.build_architecture('vgg16'); "
        "assert type(m).__module__ == 'nsfwlab.model' and type(m).__name__ == 'VGG16', type(m)",
        ["nsfwlab.train", "nsfwlab.evaluate"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_stays_light(case: str) -> None:
    statement, forbidden = CASES[case]
    code = (f"import sys; {statement}; "
            f"heavy = [m for m in {forbidden!r} if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
