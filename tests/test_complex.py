"""Complex arithmetic rewritten into real (re, im) pairs, and bfloat16 code cast at the boundary.

Every export runs in tract and is compared with torch at "approximate" (|d| <= 1e-4 + 5e-4 |x|)
unless a test says otherwise; the f16 ones at "very" (5e-2 + 1e-2 |x|), t2n's level for f16.
"""
from __future__ import annotations

import logging

import pytest
import torch
import transformers
from helpers import assert_bundle_matches

import t2n
from t2n import OptionError
from t2n.errors import TraceError, UnsupportedOpsError
from t2n.trace import capture
from t2n.translate.complex import real_arithmetic
from t2n.translate.registry import lookup


def _rotate(x, freqs_cis):
    """Meta's rotary embedding: pairs of x as complex numbers, rotated by freqs_cis."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(3).type_as(x)


class PolarRope(torch.nn.Module):
    """freqs_cis from polar() on the positions in forward (Llama 4's way); x: [B, S, H, D]."""

    def __init__(self, dim=16):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim),
                             persistent=False)

    def forward(self, x):
        pos = torch.arange(x.shape[1], dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        freqs_cis = torch.polar(torch.ones_like(freqs), freqs) * 0.5
        return _rotate(x, freqs_cis[None, :, None, :].to(torch.complex64))


class BufferRope(torch.nn.Module):
    """freqs_cis precomputed as a complex buffer and sliced to the sequence (Llama 2's way)."""

    def __init__(self, dim=16, max_len=64):
        super().__init__()
        freqs = torch.outer(torch.arange(max_len).float(),
                            1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(freqs), freqs))

    def forward(self, x):
        freqs_cis = self.freqs_cis[: x.shape[1]]
        return _rotate(x, freqs_cis.view(1, x.shape[1], 1, -1))


class Parts(torch.nn.Module):
    """complex(), conj, abs, real, imag."""

    def forward(self, re, im):
        z = torch.complex(re, im)
        w = z.conj() * z + z * 0.5
        return torch.view_as_real(w), z.abs(), (w - z).real, (z.conj() * 2).imag


class Angle(torch.nn.Module):
    """angle() is atan2(imaginary part, real part)."""

    def forward(self, x):
        return torch.view_as_complex(x).angle()


class Arithmetic(torch.nn.Module):
    """Complex by complex division, by a complex number, plus numbers and real tensors, exp."""

    def forward(self, a, b):
        za, zb = torch.view_as_complex(a), torch.view_as_complex(b)
        r = a[..., 0]
        w = za / (zb + 2.0) * (0.5 - 1.5j) + 1 - r
        w = w + r * 1j + torch.exp(za * 0.1) / r.abs().clamp(min=0.5) - za / 3
        return torch.view_as_real(w)


class Shapes(torch.nn.Module):
    """Shape ops on complex tensors: axes count in the complex rank. x: [B, S, 8, 2]."""

    def forward(self, x):
        z = torch.view_as_complex(x)                      # [B, S, 8]
        t = z.transpose(1, 2).permute(0, 2, 1)            # back to [B, S, 8]
        a, b = t.chunk(2, dim=-1)                         # [B, S, 4] each
        c = torch.cat([a * b, a], dim=-1)                 # [B, S, 8]
        s = torch.stack([c, t.flip(-1)], dim=-1)[:, :, ::2]   # [B, S, 4, 2] (complex)
        s = s.reshape(s.shape[0], s.shape[1], -1)[:, :, 2:6]  # [B, S, 4]
        u = s.unsqueeze(-2).expand(-1, -1, 3, -1)         # [B, S, 3, 4]
        v = u.select(2, 1) + u.sum(dim=2) + u.mean(dim=-2, keepdim=True).squeeze(2)
        return torch.view_as_real(v)


def _rope_input(seq):
    return torch.randn(1, seq, 2, 16)


FORMS = {
    "polar_rope": (PolarRope, lambda s: (_rope_input(s),), {"x": {1: "S"}}),
    "complex_buffer_rope": (BufferRope, lambda s: (_rope_input(s),), {"x": {1: "S"}}),
    "parts": (Parts, lambda s: (torch.randn(2, s, 4), torch.randn(2, s, 4)),
              {"re": {1: "S"}, "im": {1: "S"}}),
    "arithmetic": (Arithmetic, lambda s: (torch.randn(2, s, 4, 2), torch.randn(2, s, 4, 2)),
                   {"a": {1: "S"}, "b": {1: "S"}}),
    "shapes": (Shapes, lambda s: (torch.randn(2, s, 8, 2),), {"x": {1: "S"}}),
    "angle": (Angle, lambda s: (torch.randn(2, s, 4, 2),), {"x": {1: "S"}}),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_S"])
@pytest.mark.parametrize("form", list(FORMS))
def test_complex_form_exports(form, dynamic, tmp_path):
    cls, inputs, axes = FORMS[form]
    torch.manual_seed(0)
    model = cls().eval()
    kwargs = {"dynamic_axes": axes} if dynamic else {}
    result = assert_bundle_matches(model, inputs(5), tmp_path, other_args=[inputs(9)]
                                   if dynamic else None, **kwargs)
    assert all(d.max_abs < 1e-4 for d in result.diffs), result.verification.summary()


def test_angle_becomes_atan2(tmp_path):
    """angle() is rewritten to atan2(imaginary, real), which translates to tract's atan; every
    quadrant, both axes and the origin."""
    program = capture(Angle(), (torch.randn(2, 5, 4, 2),))
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.atan2.default in targets and lookup(torch.ops.aten.atan2.default)
    parts = torch.tensor([-1.5, -0.2, 0.0, 0.3, 2.0])
    grid = torch.stack(torch.meshgrid(parts, parts, indexing="ij"), -1).reshape(1, 25, 2)
    result = assert_bundle_matches(Angle().eval(), (grid,), tmp_path)
    assert result.diffs[0].max_abs < 1e-6, result.verification.summary()


def test_no_complex_reaches_the_translator():
    """The captured program holds real values only, with (..., 2) carriers."""
    program = capture(PolarRope(), (_rope_input(5),))
    vals = [n.meta.get("val") for n in program.graph.nodes]
    assert not any(isinstance(v, torch.Tensor) and v.is_complex() for v in vals)
    targets = {str(n.target) for n in program.graph.nodes}
    assert not any("complex" in t or "polar" in t or "view_as_real" in t for t in targets)


class CosSinPairs(torch.nn.Module):
    """A real look-alike: cos/sin stacked on a trailing axis of 2 and rotated by hand."""

    def forward(self, x):
        pos = torch.arange(x.shape[1], dtype=torch.float32)[:, None]
        angle = pos * torch.linspace(0.1, 1.0, x.shape[-1] // 2)
        cs = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)   # [S, D/2, 2]
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        re = pairs[..., 0] * cs[..., 0] - pairs[..., 1] * cs[..., 1]
        im = pairs[..., 0] * cs[..., 1] + pairs[..., 1] * cs[..., 0]
        return torch.stack([re, im], dim=-1).flatten(-2)


def test_real_look_alike_is_left_unchanged(tmp_path):
    model = CosSinPairs()
    x = torch.randn(2, 6, 8)
    program = torch.export.export(model, (x,), strict=False)
    before = program.graph_module.code
    assert real_arithmetic(program) is program
    assert program.graph_module.code == before
    assert_bundle_matches(model, (x,), tmp_path, dynamic_axes={"x": {1: "S"}})


class FftMatmul(torch.nn.Module):
    def forward(self, x, w):
        return torch.view_as_real(torch.fft.fft(x) @ torch.view_as_complex(w))


def test_unsupported_complex_ops_fail_once_naming_each(tmp_path):
    with pytest.raises(UnsupportedOpsError) as err:
        t2n.export(FftMatmul(), (torch.randn(4, 4), torch.randn(4, 4, 2)), tmp_path / "b")
    message = str(err.value)
    assert "2 complex ops cannot be rewritten" in message
    assert "aten.fft_fft.default" in message and "aten.matmul.default" in message
    assert "view_as_real" in message   # the fix names what is supported
    assert err.value.missing == ["aten.fft_fft.default", "aten.matmul.default"]
    assert not (tmp_path / "b").exists()


class RollAll(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_real(torch.view_as_complex(x).roll(1))


def test_unsupported_form_of_a_rewritten_op_is_named(tmp_path):
    with pytest.raises(UnsupportedOpsError, match=r"complex aten\.roll\.default .*flattened"):
        t2n.export(RollAll(), (torch.randn(3, 4, 2),), tmp_path / "b")


class ComplexOut(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_complex(x) * 2


def test_complex_output_is_refused_with_the_fix(tmp_path):
    with pytest.raises(TraceError, match=r"output 0 .* is complex.*view_as_real"):
        t2n.export(ComplexOut(), (torch.randn(3, 4, 2),), tmp_path / "b")


# -- Llama 4: complex rotary embeddings in a whole decoder ----------------------------------
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)


def test_llama4_text_causal_lm_dynamic_tokens(tmp_path, caplog):
    # 4 experts; full attention: the chunked-attention mask is a separate matter (its
    # floor_divide/eq on positions), not the complex rotary embeddings tested here
    config = transformers.Llama4TextConfig(
        head_dim=16, intermediate_size_mlp=128, num_local_experts=4, use_cache=False,
        layer_types=["full_attention"] * 2, **COMMON)
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(config).eval()
    ids = torch.randint(3, 256, (1, 7))
    with caplog.at_level(logging.INFO, logger="t2n"):
        result = assert_bundle_matches(model, (ids,), tmp_path, input_names=["input_ids"],
                                       dynamic_axes={"input_ids": {1: "S"}})
    assert "aten.polar.default x1" in caplog.text
    assert "aten.view_as_complex.default x4" in caplog.text
    assert result.resized is not None and result.resized.passed


def test_llama4_with_its_chunked_attention(tmp_path):
    """Llama 4's default layers attend within chunks (here of 4 tokens, fewer than the 7
    traced and the 10 of the second check): its mask's integer floor division over the token
    axis keeps its shape through translation."""
    config = transformers.Llama4TextConfig(
        head_dim=16, intermediate_size_mlp=128, num_local_experts=4, use_cache=False,
        attention_chunk_size=4, **COMMON)
    assert set(config.layer_types) == {"chunked_attention"}
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(config).eval()
    result = assert_bundle_matches(model, (torch.randint(3, 256, (1, 7)),), tmp_path,
                                   input_names=["input_ids"],
                                   dynamic_axes={"input_ids": {1: "S"}})
    assert result.resized is not None and result.resized.passed


# -- bfloat16 inside the model --------------------------------------------------------------
class CastsToBf16(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

    def forward(self, x):
        h = torch.nn.functional.silu(self.a(x).to(torch.bfloat16)) * 2
        h = h + torch.ones(h.shape[-1], dtype=torch.bfloat16)
        return self.b(h.to(x.dtype))


class AutocastBf16(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.a(x)
        return h.to(x.dtype) + 1


class Bf16Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.scale = torch.randn(8).to(torch.bfloat16)   # a plain attribute: a constant

    def forward(self, x):
        return self.a(x) * self.scale.to(x.dtype)


BF16 = {"casts": CastsToBf16, "autocast": AutocastBf16, "constant": Bf16Constant}


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("kind", list(BF16))
def test_bfloat16_code_exports_in_the_asked_dtype(kind, dtype, tmp_path, caplog):
    torch.manual_seed(0)
    model = BF16[kind]().eval()
    x = torch.randn(3, 8)
    with caplog.at_level(logging.INFO, logger="t2n"):
        result = t2n.export(model, (x,), tmp_path / "b", dtype=dtype,
                            dynamic_axes={"x": {0: "B"}})
    assert result.verification.passed and result.resized.passed
    lines = [r.getMessage() for r in caplog.records if "tract has no bfloat16" in r.getMessage()]
    assert len(lines) == 1 and f"computed in {dtype}" in lines[0], caplog.text
    tolerance = 1e-4 if dtype == "f32" else 5e-3
    assert all(d.max_abs < tolerance for d in result.diffs), result.verification.summary()


def test_bfloat16_code_without_a_dtype_is_refused_with_the_fix(tmp_path):
    with pytest.raises(OptionError, match=r"bfloat16.*--dtype f32"):
        t2n.export(CastsToBf16(), (torch.randn(3, 8),), tmp_path / "b")
