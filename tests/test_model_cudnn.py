"""cuDNN attention's bad input: named off a GPU, or on a GPU whose cuDNN refuses the model.

No GPU here, so the refusal is cuDNN's real one on this machine ("cuDNN is not detected"): the
probe in llm.model.cudnn compiles the call and reports what stopped it.
"""

import warnings

import pytest

from helpers import tiny_config
from llm.config.validate import validate_config
from llm.errors import ConfigError
from llm.model import spec as spec_module
from llm.model.cudnn import cudnn_attention_problem
from llm.model.spec import model_spec


def test_cudnn_off_gpu_is_one_line_error():
    with pytest.raises(ConfigError, match="attention_impl=cudnn needs an NVIDIA GPU with cuDNN and this run is on cpu"):
        model_spec(tiny_config("model.attention_impl=cudnn"), platform="cpu")


def test_the_probe_reports_cudnns_refusal():
    problem = cudnn_attention_problem(32, 4, 2, "bfloat16")
    assert problem and "\n" not in problem and "cudnn" in problem.lower()


def test_on_a_gpu_without_a_usable_cudnn_auto_falls_back_and_cudnn_stops(monkeypatch):
    """As on a GPU machine whose cuDNN cannot take the attention: the spec is for the backend
    this process runs on, so the probe is asked (and here it really fails)."""
    monkeypatch.setattr(spec_module.jax, "default_backend", lambda: "gpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model_spec(tiny_config("model.attention_impl=auto"), platform="gpu").attention_impl == "xla"
    assert any("cuDNN attention is not available" in str(w.message) and "using xla" in str(w.message) for w in caught)
    with pytest.raises(ConfigError, match=r"attention_impl=cudnn: cuDNN cannot run this model's attention \(head_dim 32"):
        model_spec(tiny_config("model.attention_impl=cudnn"), platform="gpu")


def test_planning_for_a_gpu_from_another_machine_does_not_ask_this_one():
    assert model_spec(tiny_config("model.attention_impl=cudnn"), platform="gpu").attention_impl == "cudnn"


def test_an_odd_sequence_length_is_refused_before_cudnn_sees_it():
    with pytest.raises(ConfigError, match="attention_impl=cudnn trains with the packing bias only on an even data.seq_len"):
        validate_config(tiny_config("model.attention_impl=cudnn", "data.seq_len=127"))
    validate_config(tiny_config("model.attention_impl=cudnn", "data.seq_len=128"))
