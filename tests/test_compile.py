"""utils.training.compile: the compile key, a one-line error without a compiler, plain state-dict names, outputs."""

import pytest
import torch
from torch import nn

from utils.config import validate
from utils.errors import UserError
from utils.training.compile import MODES, compile_key, compile_model, plain_state_dict, unwrap_compiled

CPU = torch.device("cpu")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def load(value):
    return validate({"compile": value}, {"compile": compile_key()}, "cfg.json")["compile"]


def test_compile_key_takes_false_true_and_modes():
    assert load(False) is False and load(True) is True and load("max-autotune") == "max-autotune"
    assert validate({}, {"compile": compile_key()}, "cfg.json") == {"compile": False}
    with pytest.raises(
        UserError,
        match=r"^cfg\.json: key 'compile': expected false, true or one of .*\(did you mean 'max-autotune'\?\)$",
    ):
        load("max-autotun")
    with pytest.raises(UserError, match=r"^cfg\.json: key 'compile': expected true or false or a string, got int 1$"):
        load(1)


def test_modes_are_torch_modes():
    import torch._inductor

    assert set(MODES) <= set(torch._inductor.list_mode_options())


def test_no_cpp_compiler_is_one_line_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++ to find
    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    model = mlp()
    with pytest.raises(UserError) as caught:
        compile_model(model, True, CPU)
    assert str(caught.value) == (
        "config: key 'compile': torch.compile needs a C++ compiler on the CPU, and none was found on this machine "
        "(tried g++; set CXX to one); set compile=false"
    )
    assert compile_model(model, False, CPU) is model


def test_cxx_naming_a_missing_compiler_is_reported(monkeypatch):
    from torch._inductor import config

    monkeypatch.delenv("TORCH_INDUCTOR_INSTALL_GXX", raising=False)
    # What CXX=no-such-c++ at startup sets; torch's own patch (pytest's monkeypatch would hide the key on undo).
    missing = r"\(tried no-such-c\+\+; set CXX to one\); set compile=false$"
    with config.patch({"cpp.cxx": (None, "no-such-c++")}), pytest.raises(UserError, match=missing):
        compile_model(mlp(), "max-autotune", CPU)


def test_cuda_without_triton_is_reported(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton_package", lambda: False)
    with pytest.raises(UserError, match=r"^config: key 'compile': torch.compile needs Triton on CUDA devices"):
        compile_model(mlp(), True, torch.device("cuda"))


def test_state_dict_names_stay_plain():
    model = mlp()
    compiled = compile_model(model, True, CPU)
    assert compiled is not model and unwrap_compiled(compiled) is model and unwrap_compiled(model) is model
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())  # what plain_state_dict avoids
    assert list(plain_state_dict(compiled)) == list(model.state_dict()) == list(plain_state_dict(model))
    fresh = compile_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), True, CPU)
    unwrap_compiled(fresh).load_state_dict(plain_state_dict(compiled))  # compile=true -> true
    nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).load_state_dict(plain_state_dict(fresh))  # -> false


@pytest.mark.slow  # inductor writes and builds C++ kernels: about 40 s on a loaded 2-core machine
def test_compiled_mlp_gives_the_plain_outputs():
    model = mlp()
    x = torch.randn(5, 8)
    compiled = compile_model(model, True, CPU)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
