"""runner.ship.llamacpp: the one seam to llama.cpp."""
from __future__ import annotations

import pytest

from runner.ship import llamacpp


@pytest.mark.skipif(not (llamacpp.tools_dir() / "lib" / "libllama.so").is_file(),
                    reason="libllama is not built here (`make llama-lib`; make test does it)")
def test_models_load_without_the_extra_cpu_buffer_types():
    """llama.cpp 0.3.36's AMX buffer segfaults in the first decode on a CPU with AMX (this project's CI machine
    has one: tests/e2e/test_export_gguf.py crashed its pytest worker); every model tunebook loads is placed in plain
    CPU buffers, and asking twice wraps the defaults once."""
    lc = llamacpp._llama_cpp()
    lc2 = llamacpp._llama_cpp()
    assert lc is lc2
    low = lc.llama_cpp
    assert low.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params.tunebook_plain_buffers is True
    assert getattr(low.llama_model_default_params.__closure__[0].cell_contents, "tunebook_plain_buffers", False) \
        is False  # the wrapped function is llama.cpp's own, not a wrapper of a wrapper
