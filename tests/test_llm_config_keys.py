"""Config keys that change the numbers are implemented as transformers implements them, or refused in one line:
rope_scaling (linear, dynamic, yarn), hidden_act, use_sliding_window, Video-XL's beacon_attend_prev."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.activations import ACT2FN
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from longvid.cli import main
from longvid.compress.beacon import BeaconConfig
from longvid.errors import ConfigError
from longvid.llm import Qwen2Config, Qwen2ForCausalLM
from longvid.llm.qwen2 import ACTIVATIONS, RopeScaling, rope_cos_sin

SCALINGS = [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 3.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "factor": 4.0},  # original length = max_position_embeddings
    {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 16,
        "beta_slow": 2,
        "mscale": 0.7,
        "mscale_all_dim": 0.5,
    },
    {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 24,
        "attention_factor": 1.3,
        "truncate": False,
    },
]


def hf_config(scaling: dict | None, **extra) -> transformers.Qwen2Config:
    params = {"rope_theta": 10000.0, **(scaling or {"rope_type": "default"})}
    return transformers.Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters=params,
        **extra,
    )


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("length", [40, 200])  # inside and beyond max_position_embeddings (dynamic rescales)
def test_rope_tables_equal_transformers(scaling, length):
    hf = hf_config(scaling)
    cfg = Qwen2Config.from_dict(hf.to_dict())
    assert cfg.rope_scaling is not None and cfg.rope_scaling.type == scaling["rope_type"]
    positions = torch.arange(length)
    want_cos, want_sin = Qwen2RotaryEmbedding(hf)(torch.zeros(1, dtype=torch.float32), positions[None])
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, torch.float32, cfg.rope_scaling)
    torch.testing.assert_close(cos, want_cos[0], atol=0, rtol=0)
    torch.testing.assert_close(sin, want_sin[0], atol=0, rtol=0)
    plain_cos, _ = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, torch.float32)
    assert not torch.allclose(cos, plain_cos) or (scaling["rope_type"] == "dynamic" and length <= 64)


@pytest.mark.parametrize("scaling", SCALINGS[:3], ids=["linear", "dynamic", "yarn"])
def test_decoder_with_rope_scaling_equals_transformers(scaling):
    torch.manual_seed(0)
    hf_cfg = hf_config(scaling)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    ours = Qwen2ForCausalLM(Qwen2Config.from_dict(hf_cfg.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 97, (1, 90))  # past max_position_embeddings, where dynamic differs from plain
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ours(ours.embed(ids)).hidden), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_old_style_rope_scaling_reads_the_same():
    """config.json files written by transformers 4.x: `rope_scaling` with "type" beside a top-level rope_theta."""
    old = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "rope_theta": 1e6,
        "max_position_embeddings": 32768,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    cfg = Qwen2Config.from_dict(old)
    assert cfg.rope_scaling == RopeScaling("yarn", 4.0, 32768) and cfg.rope_theta == 1e6
    assert Qwen2Config.from_dict({**old, "rope_scaling": None}).rope_scaling is None
    assert Qwen2Config.from_dict({**old, "rope_scaling": {"type": "default"}}).rope_scaling is None


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"type": "longrope", "factor": 2.0}, "longrope"),
        ({"type": "su"}, "'su' is not supported"),
        ({"type": "linear"}, "factor >= 1"),
        ({"type": "yarn", "factor": 0.5}, "factor >= 1"),
        ({"type": "dynamic", "factor": "4"}, "factor >= 1"),
        ({"type": "yarn", "factor": 4.0, "beta_fast": "x"}, "beta_fast"),
        ("yarn", "must be an object"),
    ],
)
def test_unsupported_rope_scaling_is_refused(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        Qwen2Config.from_dict({"rope_scaling": bad})


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_equal_transformers(name):
    x = torch.linspace(-6, 6, 401)
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), atol=1e-6, rtol=1e-6)
    assert Qwen2Config.from_dict({"hidden_act": name}).hidden_act == name


def test_decoder_with_gelu_equals_transformers():
    torch.manual_seed(0)
    hf_cfg = hf_config(None, hidden_act="gelu_pytorch_tanh")
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    ours = Qwen2ForCausalLM(Qwen2Config.from_dict(hf_cfg.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ours(ours.embed(ids)).hidden), hf(ids).logits, atol=1e-5, rtol=1e-5)
        silu = Qwen2ForCausalLM(Qwen2Config.from_dict({**hf_cfg.to_dict(), "hidden_act": "silu"})).eval()
        silu.load_state_dict(hf.state_dict())
        assert not torch.allclose(silu(silu.embed(ids)).hidden, ours(ours.embed(ids)).hidden, atol=1e-3)


def test_unknown_activation_and_sliding_window_are_refused():
    with pytest.raises(ConfigError, match="hidden_act='mish' is not supported"):
        Qwen2Config.from_dict({"hidden_act": "mish"})
    with pytest.raises(ConfigError, match="use_sliding_window=true is not supported"):
        Qwen2Config.from_dict({"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 21})
    # the released configs: a window size with the switch off changes nothing
    assert Qwen2Config.from_dict({"use_sliding_window": False, "sliding_window": 4096}).hidden_act == "silu"


def test_beacon_attend_prev():
    assert BeaconConfig.from_release({"beacon_attend_prev": False}) == BeaconConfig.from_release({})
    with pytest.raises(ConfigError, match="beacon_attend_prev must be true or false"):
        BeaconConfig.from_release({"beacon_attend_prev": "yes"})


@pytest.mark.parametrize(
    "setting,needle",
    [
        ('rope_scaling={"type":"longrope","factor":2}', "rope_scaling type 'longrope'"),
        ("hidden_act=mish", "hidden_act='mish'"),
        ("use_sliding_window=true", "use_sliding_window"),
    ],
)
def test_cli_refuses_in_one_line(tiny_checkpoint, short_video, setting, needle, capfd):
    code = main(["ask", str(short_video), "q", "--model", str(tiny_checkpoint), "--set", setting])
    err = capfd.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
