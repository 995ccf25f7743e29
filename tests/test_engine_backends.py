"""Choosing the engine's attention backend: unknown names and a shadowed ``kernels`` package are
refused with words that say what to do."""
import sys
import types

import pytest

from engine import attention
from scheduler.errors import ConfigError


def test_an_unknown_backend_is_named():
    with pytest.raises(ConfigError, match="unknown attention backend 'cuda'; expected one of"):
        attention.make_backend("cuda")


def test_another_package_named_kernels_is_named_when_the_triton_backend_cannot_load(monkeypatch):
    """Hugging Face's ``kernels`` (which transformers 5.25 requires) has this repository's
    kernels package's import name; where it is found first, the error says so."""
    foreign = types.ModuleType("kernels")
    foreign.__file__ = "/elsewhere/site-packages/kernels/__init__.py"
    foreign.__path__ = []  # a package without our modules
    monkeypatch.setitem(sys.modules, "kernels", foreign)
    monkeypatch.setitem(sys.modules, "kernels.backend", None)  # its import fails, as from the foreign package
    monkeypatch.delitem(attention.BACKENDS, "triton", raising=False)
    with pytest.raises(ConfigError, match="the package named 'kernels' found is /elsewhere/site-packages/kernels"):
        attention.make_backend("triton")
    monkeypatch.delitem(sys.modules, "kernels")
    import kernels  # ours, from the repository: a failure there gets no such words

    assert kernels.__file__.endswith("kernels/__init__.py")
    with pytest.raises(ConfigError, match="backend 'triton' is not available") as refused:
        attention.make_backend("triton")
    assert "the package named 'kernels'" not in str(refused.value)


def test_the_triton_backend_on_a_cpu_without_the_interpreter_says_what_to_set(monkeypatch):
    """Triton's own failure there is "0 active drivers ([]). There should only be one", at the
    first kernel; the engine refuses first, before any weights are made."""
    pytest.importorskip("triton")
    from engine.runner import ModelRunner
    from scheduler.model_spec import model_spec

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="on a CPU only in Triton's interpreter, which TRITON_INTERPRET=1 set"):
        ModelRunner(model_spec("tiny"), 16, device="cpu", backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ModelRunner(model_spec("tiny"), 16, device="cpu", backend="triton").model is not None
