import pytest
import torch
import torch.nn.functional as F

from helpers import Lambda, assert_bundle_matches


def qkv(b=1, h=4, s=6, d=8, kv_heads=None, kv_len=None):
    kv_heads = kv_heads or h
    kv_len = kv_len or s
    return (torch.randn(b, h, s, d), torch.randn(b, kv_heads, kv_len, d),
            torch.randn(b, kv_heads, kv_len, d))


CASES = {
    "plain": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), qkv()),
    "causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv()),
    "causal_rect": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                    qkv(s=3, kv_len=7)),
    "scale": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), qkv()),
    "gqa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
            qkv(h=8, kv_heads=2)),
    "rank3": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
              tuple(t[0] for t in qkv())),
}


@pytest.mark.parametrize("name", CASES)
def test_sdpa(name, tmp_path):
    fn, args = CASES[name]
    assert_bundle_matches(Lambda(fn), args, tmp_path)


def test_sdpa_float_mask(tmp_path):
    mask = torch.randn(1, 1, 6, 6)
    assert_bundle_matches(Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(
        q, k, v, attn_mask=m)), qkv() + (mask,), tmp_path)


def test_sdpa_bool_mask_broadcast(tmp_path):
    keep = torch.rand(6, 6) > 0.3
    keep[:, 0] = True  # no fully masked row (torch gives NaN there)
    assert_bundle_matches(Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(
        q, k, v, attn_mask=m)), qkv() + (keep,), tmp_path)


def test_sdpa_dynamic_sequence(tmp_path):
    fn = Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    axes = {f"input_{i}": {2: "S"} for i in range(3)}
    assert_bundle_matches(fn, qkv(s=5), tmp_path, dynamic_axes=axes, other_args=[qkv(s=11)])


@pytest.mark.parametrize("f32_attention", [False, True], ids=["f16", "f16_f32attn"])
def test_sdpa_f16(f32_attention, tmp_path):
    fn = Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    assert_bundle_matches(fn, qkv(), tmp_path, dtype="f16", f32_attention=f32_attention)


def test_sdpa_padding_mask_broadcast_over_rows(tmp_path):
    """A [B, 1, 1, S] key-padding mask (BERT style) broadcasts over query rows."""
    keep = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    keep[..., 4:] = False
    fn = Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    assert_bundle_matches(fn, qkv() + (keep,), tmp_path)


def _gqa(q, k, v, m):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)


@pytest.mark.parametrize("mask_heads", [1, 8], ids=["shared_mask", "per_head_mask"])
def test_sdpa_gqa_with_mask(mask_heads, tmp_path):
    # query head h reads key/value head h // 4: a per-head mask must follow the same grouping
    mask = torch.randn(1, mask_heads, 3, 7)
    assert_bundle_matches(Lambda(_gqa), qkv(h=8, kv_heads=2, s=3, kv_len=7) + (mask,),
                          tmp_path)


def test_sdpa_gqa_causal_dynamic_lengths(tmp_path):
    # decode-style shapes: S new queries over T keys, both symbolic, one bundle for S = 1
    fn = Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                               enable_gqa=True))
    axes = {"input_0": {2: "S"}, "input_1": {2: "T"}, "input_2": {2: "T"}}
    assert_bundle_matches(fn, qkv(h=6, kv_heads=2, s=3, kv_len=5), tmp_path,
                          dynamic_axes=axes, other_args=[qkv(h=6, kv_heads=2, s=1, kv_len=9)])


def test_sdpa_gqa_f16(tmp_path):
    assert_bundle_matches(Lambda(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, enable_gqa=True)), qkv(h=8, kv_heads=4), tmp_path, dtype="f16")


def _repeat_kv(x, groups):
    b, h, t, d = x.shape  # as transformers repeats key/value heads for grouped-query attention
    return x[:, :, None, :, :].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def test_sdpa_over_repeated_keys_reads_them_unrepeated(tmp_path):
    """Keys and values repeated by the model itself reach the matmuls unrepeated: the query
    heads of a group become rows of one matmul (tract runs that 3x faster for decoding)."""
    fn = Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(
        q, _repeat_kv(k, 3), _repeat_kv(v, 3), attn_mask=m))
    mask = torch.randn(1, 1, 3, 5)
    axes = {"input_0": {2: "S"}, "input_1": {2: "T"}, "input_2": {2: "T"},
            "input_3": {2: "S", 3: "T"}}
    decode = qkv(h=6, kv_heads=2, s=1, kv_len=9) + (torch.randn(1, 1, 1, 9),)
    result = assert_bundle_matches(fn, qkv(h=6, kv_heads=2, s=3, kv_len=5) + (mask,), tmp_path,
                                   dynamic_axes=axes, other_args=[decode])
    graph = (result.path / "graph.nnef").read_text()
    assert "tract_core_broadcast" not in graph and "tile(" not in graph
    assert graph.count("matmul(") == 2


def _tile_heads(x, groups):
    # a look-alike of repeat_kv: the G copies tile the heads (query head h reads h % Hkv)
    b, h, t, d = x.shape
    return x.unsqueeze(2).repeat(1, groups, 1, 1, 1).reshape(b, h * groups, t, d)


def _tile_new_axis(x, groups):
    # repeat_kv written with repeat along the new axis (query head h reads h // G)
    b, h, t, d = x.shape
    return x.unsqueeze(2).repeat(1, 1, groups, 1, 1).reshape(b, h * groups, t, d)


def _expand_before_heads(x, groups):
    # copies in front of the heads (h % Hkv again), through an expand this time
    b, h, t, d = x.shape
    return x.unsqueeze(1).expand(b, groups, h, t, d).reshape(b, h * groups, t, d)


def _interleave(x, groups):
    return x.repeat_interleave(groups, dim=1)


@pytest.mark.parametrize("repeat, unrepeated", [
    (_repeat_kv, True), (_interleave, True), (_tile_new_axis, True),
    (_tile_heads, False), (_expand_before_heads, False)],
    ids=lambda p: p.__name__.strip("_") if callable(p) else ("read_unrepeated" if p
                                                              else "literal"))
def test_repeated_keys_are_read_unrepeated_only_for_h_div_g(repeat, unrepeated, tmp_path):
    """Only repetitions where query head h reads key/value head h // G are folded into the
    grouped matmul; the others (h % Hkv) are translated literally, and all match torch."""
    fn = Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, repeat(k, 3), repeat(v, 3)))
    result = assert_bundle_matches(fn, qkv(h=6, kv_heads=2, s=3, kv_len=5), tmp_path)
    graph = (result.path / "graph.nnef").read_text()
    repeated = "tract_core_broadcast" in graph or "tile(" in graph
    assert repeated != unrepeated, graph
