"""`import hwdsa.export` loads neither onnxruntime nor tensorrt, and does not initialise CUDA."""

from __future__ import annotations

import subprocess
import sys

import hwdsa.export


def test_import_is_light() -> None:
    code = (
        "import sys, hwdsa.export, torch; "
        "print(sorted(m for m in ('onnxruntime', 'tensorrt') if m in sys.modules), torch.cuda.is_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[] False"


def test_public_names_resolve() -> None:
    assert hwdsa.export.__all__ and all(hasattr(hwdsa.export, name) for name in hwdsa.export.__all__)
