"""Known-answer and property tests for srclib.attention (method.md 1).

References are independent of the recorder: eager attentions from transformers
(output_attentions=True), a manual softmax(q k^T) from TinyLM's block weights, and a naive
full-matrix softmax for the property tests.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import CHUNK  # tests/ is on sys.path
from srclib.attention import _Workspace, _key_mass, head_shares, key_mass, key_mass_per_head, record_mass
from srclib.models.tiny import TinyLM, apply_rope, rope_cache, test_config

ATOL = 1e-4


# ---- helpers ---------------------------------------------------------------------------------
def _llama(gqa: bool = False, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2 if gqa else 4, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    # random-init attention is near uniform; sharpen it so the test is not trivially passed
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return model


def _eager_mass(model, ids, attention_mask=None, query_keep=None) -> torch.Tensor:
    """(L, B, T) column sums of eager attentions over heads and (kept) queries."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=attention_mask, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    att = torch.stack(out.attentions)  # (L, B, H, Tq, Tk)
    if query_keep is not None:  # (B, Tq) bool
        att = att * query_keep[None, :, None, :, None]
    return att.sum(dim=(2, 3))  # (L, B, Tk)


def _recorded(model, ids, attention_mask=None, chunk_size=3):
    with torch.no_grad(), record_mass(chunk_size=chunk_size) as rec:
        logits = model(input_ids=ids, attention_mask=attention_mask).logits
    return rec, logits


# ---- transformers Llama: eager vs recorder ---------------------------------------------------
@pytest.mark.parametrize("gqa", [False, True])
def test_llama_causal_matches_eager(gqa):
    model = _llama(gqa=gqa)
    ids = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))
    ref = _eager_mass(model, ids)
    rec, _ = _recorded(model, ids)
    assert rec.calls == 3
    assert rec.mass.shape == (3, 2, 11) and rec.mass.dtype == torch.float32
    torch.testing.assert_close(rec.mass, ref, atol=ATOL, rtol=1e-4)
    # causal: key 0 receives mass from every query; the last key only from the last query
    assert (rec.mass[:, :, 0] > rec.mass[:, :, -1]).all()


@pytest.mark.parametrize("gqa", [False, True])
def test_llama_left_padding_matches_eager(gqa):
    model = _llama(gqa=gqa)
    ids = torch.randint(3, 100, (3, 10), generator=torch.Generator().manual_seed(2))
    am = torch.ones(3, 10, dtype=torch.long)
    am[0, :4] = 0  # left padding
    am[2, :1] = 0
    keep = am.bool()
    ref = _eager_mass(model, ids, am, query_keep=keep)
    rec, _ = _recorded(model, ids, am)
    mass = rec.mass
    assert torch.isfinite(mass).all()
    torch.testing.assert_close(mass, ref, atol=ATOL, rtol=1e-4)
    # padding keys receive nothing; each layer's mass is H * (number of real queries)
    assert mass[:, 0, :4].abs().max() < 1e-6
    H = model.config.num_attention_heads
    torch.testing.assert_close(mass.sum(-1), (H * keep.sum(-1).float()).expand(3, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("gqa", [False, True])
def test_llama_bidirectional_matches_eager(gqa):
    model = _llama(gqa=gqa)
    B, T = 2, 9
    ids = torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(3))
    zeros = torch.zeros(B, 1, T, T)  # 4-D additive mask of zeros: full attention
    ref = _eager_mass(model, ids, zeros)
    rec, _ = _recorded(model, ids, zeros)
    torch.testing.assert_close(rec.mass, ref, atol=ATOL, rtol=1e-4)
    # bidirectional: the last key gets real mass from every query (not only from itself)
    assert (rec.mass[:, :, -1] > 0.05).all()


def test_llama_logits_bit_identical():
    model = _llama(gqa=True)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    _, recorded = _recorded(model, ids)
    assert torch.equal(plain, recorded)


# ---- TinyLM: manual eager from the block weights ---------------------------------------------
def _tiny_manual_mass(model: TinyLM, ids, attention_mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + mask) from each block's own input, weights and RoPE."""
    cfg = model.config
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: inputs.append(a[0] if a else kw["x"]), with_kwargs=True)
             for b in model.model.transformer.blocks]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=attention_mask)
    for h in hooks:
        h.remove()
    B, T = ids.shape
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    hd = cfg.hidden_size // H
    cos, sin = rope_cache(T, hd, cfg.rope_theta, ids.device, torch.float32)
    out = []
    for block, x in zip(model.model.transformer.blocks, inputs):
        with torch.no_grad():
            h = block.attn_norm(x)
            q = (h @ block.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2)
            k = (h @ block.k_proj.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k = k.repeat_interleave(H // Hkv, dim=1)
            s = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
            allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
            if cfg.causal:
                allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()[:, None, None, :]
            p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
            out.append(p.sum(dim=(1, 2)))  # (B, T)
    return torch.stack(out)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_tiny_matches_manual(causal, kv_heads):
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=causal, n_kv_heads=kv_heads, init_std=0.3)).eval()
    ids = torch.randint(0, 63, (2, 13), generator=torch.Generator().manual_seed(5))
    ref = _tiny_manual_mass(model, ids)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    rec, logits = _recorded(model, ids, chunk_size=4)
    torch.testing.assert_close(rec.mass, ref, atol=ATOL, rtol=1e-4)
    assert torch.equal(plain, logits)
    L, H, T = 2, 4, 13
    torch.testing.assert_close(rec.mass.sum(-1), torch.full((L, 2), float(H * T)), atol=1e-3, rtol=0)
    assert rec.mass.mean(dim=(0, 2)).sub(H).abs().max() < 1e-4  # mean_k m^(l)_k = H


def test_tiny_padding_mask_matches_manual():
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=False, init_std=0.3)).eval()
    ids = torch.randint(0, 63, (2, 9), generator=torch.Generator().manual_seed(6))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, -3:] = 0  # right padding of a bidirectional model: padding keys masked
    ref = _tiny_manual_mass(model, ids, am)
    rec, _ = _recorded(model, ids, am)
    torch.testing.assert_close(rec.mass, ref, atol=ATOL, rtol=1e-4)
    assert rec.mass[:, 1, -3:].abs().max() == 0


def test_tiny_kv_cache_matches_full_prefix_row():
    """Decoding with a KV cache: the newest query's mass equals the last row of full attention."""
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=True, shift=False, init_std=0.3)).eval()
    ids = torch.randint(0, 63, (1, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        with record_mass(chunk_size=CHUNK) as rec:
            model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
    # full-prefix reference: row T-1 of the causal attention, from the manual computation
    full = _tiny_manual_rows(model, ids)
    torch.testing.assert_close(rec.mass[:, 0], full[:, 0, -1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(rec.mass.sum(-1), torch.full((2, 1), 4.0), atol=1e-4, rtol=0)


def _tiny_manual_rows(model, ids):
    """(L, B, T_q, T_k) attention summed over heads (not over queries)."""
    cfg = model.config
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: inputs.append(a[0] if a else kw["x"]), with_kwargs=True)
             for b in model.model.transformer.blocks]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    B, T = ids.shape
    H, hd = cfg.n_heads, cfg.hidden_size // cfg.n_heads
    cos, sin = rope_cache(T, hd, cfg.rope_theta, ids.device, torch.float32)
    rows = []
    for block, x in zip(model.model.transformer.blocks, inputs):
        with torch.no_grad():
            h = block.attn_norm(x)
            q = apply_rope((h @ block.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2), cos, sin)
            k = apply_rope((h @ block.k_proj.weight.T).view(B, T, H, hd).transpose(1, 2), cos, sin)
            s = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(
                ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            rows.append(torch.softmax(s, -1).sum(1))  # (B, T, T)
    return torch.stack(rows)


# ---- key_mass against a naive full softmax ---------------------------------------------------
def _naive(q, k, mask, is_causal, scale):
    """torch's documented SDPA reference, attention weights only, fully masked rows -> 0."""
    L, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = torch.zeros(L, S, dtype=torch.float64)
    if is_causal:
        bias.masked_fill_(~torch.ones(L, S, dtype=torch.bool).tril(0), float("-inf"))
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask.double()
    if k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    w = torch.softmax(q.double() @ k.double().transpose(-2, -1) * scale + bias, dim=-1).nan_to_num(0.0)
    return w


_WORKSPACE = _Workspace()


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3), H=st.sampled_from([1, 2, 4]), rep=st.sampled_from([1, 2]),
    Tq=st.integers(1, 9), extra_k=st.integers(0, 4), hd=st.sampled_from([4, 8]),
    chunk=st.integers(1, 10), causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "bool_full", "bool_keys", "float", "float_2d"]),
    scale=st.sampled_from([None, 0.3]), seed=st.integers(0, 10_000),
)
def test_key_mass_matches_naive(B, H, rep, Tq, extra_k, hd, chunk, causal, mask_kind, scale, seed):
    g = torch.Generator().manual_seed(seed)
    Tk = Tq + extra_k
    Hq = H * rep
    q = torch.randn(B, Hq, Tq, hd, generator=g) * 2
    k = torch.randn(B, H, Tk, hd, generator=g) * 2
    v = torch.randn(B, H, Tk, hd, generator=g)
    mask = None
    if mask_kind == "bool_full":
        mask = torch.rand(B, 1, Tq, Tk, generator=g) > 0.3
    elif mask_kind == "bool_keys":
        mask = torch.rand(B, 1, 1, Tk, generator=g) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(B, Hq, Tq, Tk, generator=g)
    elif mask_kind == "float_2d":
        mask = torch.randn(Tq, Tk, generator=g)
    if causal and mask is not None:  # SDPA forbids both: fold the causal part into the mask
        causal = False
    ref = _naive(q, k, mask, causal, scale)  # (B, Hq, Tq, Tk)
    got = key_mass(q, k, attn_mask=mask, is_causal=causal, scale=scale, chunk_size=chunk)
    torch.testing.assert_close(got.double(), ref.sum(dim=(1, 2)), atol=1e-4, rtol=1e-4)
    # per head: the same total bit for bit, each head's column mass and its live queries
    total, heads, nq = key_mass_per_head(q, k, attn_mask=mask, is_causal=causal, scale=scale, chunk_size=chunk)
    assert torch.equal(total, got)
    torch.testing.assert_close(heads.double(), ref.sum(dim=2), atol=1e-4, rtol=1e-4)
    assert torch.equal(nq, (ref.sum(-1) > 0.5).sum(-1))
    # the recorder's reused buffers (one workspace across every example: shapes grow and shrink)
    # give the fresh tensors' values bit for bit
    for per_head in (False, True):
        fresh = _key_mass(q, k, mask, causal, scale, chunk, per_head=per_head)
        reused = _key_mass(q, k, mask, causal, scale, chunk, per_head=per_head, work=_WORKSPACE)
        for a, b in zip(fresh, reused):
            assert (a is None and b is None) or torch.equal(a, b)
    # the reference weights reproduce SDPA's own output, so the mirrored semantics are SDPA's
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                         enable_gqa=rep > 1)
    vv = v.repeat_interleave(rep, -3).double()
    torch.testing.assert_close(out.double(), ref @ vv, atol=1e-4, rtol=1e-4)


def test_causal_top_left_when_tq_lt_tk():
    q = torch.randn(1, 1, 2, 4)
    k = torch.randn(1, 1, 5, 4)
    m = key_mass(q, k, is_causal=True, chunk_size=CHUNK)
    # query 0 sees key 0 only, query 1 keys 0..1: keys 2..4 get nothing (top-left alignment)
    assert m[0, 2:].abs().max() == 0
    torch.testing.assert_close(m.sum(), torch.tensor(2.0))


def test_fully_masked_rows_are_zero_not_nan():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 0, :] = False
    fmask = torch.zeros(1, 1, 3, 3)
    fmask[..., 0, :] = float("-inf")
    for mk in (mask, fmask):
        m = key_mass(q, k, attn_mask=mk, chunk_size=CHUNK)
        assert torch.isfinite(m).all()
        torch.testing.assert_close(m.sum(), torch.tensor(4.0))  # 2 heads x 2 live queries


# ---- context-manager behaviour ---------------------------------------------------------------
def test_restores_on_exit_and_exception_and_nests():
    original = F.scaled_dot_product_attention
    q = torch.randn(1, 1, 3, 4)
    with record_mass(chunk_size=CHUNK) as outer:
        with record_mass(chunk_size=CHUNK) as inner:
            F.scaled_dot_product_attention(q, q, q)
        assert F.scaled_dot_product_attention is not original
        F.scaled_dot_product_attention(q, q, q)
    assert F.scaled_dot_product_attention is original
    assert inner.calls == 1 and outer.calls == 2
    with pytest.raises(ZeroDivisionError):
        with record_mass(chunk_size=CHUNK):
            _ = 1 / 0
    assert torch.nn.functional.scaled_dot_product_attention is original


def test_after_call_runs_after_the_mass_and_can_skip_the_output():
    """after_call sees each call's mass already recorded; if it raises, the original SDPA is never
    called for that call; if not, the output is the original's, bit for bit."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    expected = F.scaled_dot_product_attention(q, k, v)
    seen, calls = [], []
    original = F.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    F.scaled_dot_product_attention = counting
    try:
        with record_mass(CHUNK, after_call=lambda rec: seen.append(rec.calls)) as rec:
            out = F.scaled_dot_product_attention(q, k, v)
        assert torch.equal(out, expected) and seen == [1] and calls == [1]

        def stop(rec):
            raise KeyError("stop")

        with pytest.raises(KeyError), record_mass(CHUNK, after_call=stop) as rec2:
            F.scaled_dot_product_attention(q, k, v)
        assert calls == [1] and rec2.calls == 1  # recorded, output never computed
        assert torch.equal(rec2.mass, rec.mass) and torch.equal(rec.mass[0], key_mass(q, k, chunk_size=CHUNK))
    finally:
        F.scaled_dot_product_attention = original


def test_mass_errors_are_clear():
    with record_mass(chunk_size=CHUNK) as rec:
        pass
    with pytest.raises(RuntimeError, match="no attention call"):
        _ = rec.mass
    with pytest.raises(ValueError, match="chunk_size"):
        with record_mass(chunk_size=0):
            pass
    with record_mass(chunk_size=CHUNK) as rec:
        F.scaled_dot_product_attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4))
        F.scaled_dot_product_attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4))
    with pytest.raises(RuntimeError, match="per_call"):
        _ = rec.mass
    rec.reset()
    assert rec.calls == 0


def test_gradients_flow_through_recorded_forward():
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=False))
    ids = torch.randint(0, 63, (2, 6))
    with record_mass(chunk_size=CHUNK) as rec:
        loss = model(input_ids=ids).logits.sum()
    loss.backward()
    assert rec.calls == 2 and not rec.mass.requires_grad
    assert model.model.transformer.blocks[0].q_proj.weight.grad is not None


def test_batch_broadcast_between_query_key_and_mask():
    """SDPA broadcasts batch dims (e.g. learned queries with batch 1): so does key_mass."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 4, 8, generator=g)
    k = torch.randn(3, 2, 6, 8, generator=g)
    fmask = torch.randn(3, 1, 4, 6, generator=g)
    bmask = torch.rand(3, 1, 1, 6, generator=g) > 0.4
    for mask in (fmask, bmask, None):
        ref = _naive(q, k, mask, False, None).sum(dim=(1, 2))  # (3, 6)
        got = key_mass(q, k, attn_mask=mask, chunk_size=3)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    got = key_mass(q, k[:1], attn_mask=fmask, chunk_size=3)  # only the mask has batch 3
    torch.testing.assert_close(got.double(), _naive(q, k[:1], fmask, False, None).sum(dim=(1, 2)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_llama_gqa_decode_step_matches_eager_last_row(padded):
    """One cached decoding step (transformers' enable_gqa / pack_gqa paths) == last eager row."""
    model = _llama(gqa=True)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(8))
    am = torch.ones(2, 9, dtype=torch.long)
    if padded:
        am[1, :3] = 0
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], attention_mask=am[:, :-1], use_cache=True)
        with record_mass(chunk_size=CHUNK) as rec:
            model(input_ids=ids[:, -1:], attention_mask=am, cache=out.past_key_values, use_cache=True)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    ref = torch.stack([a[:, :, -1].sum(1) for a in ref])  # (L, B, T): newest query, summed over heads
    torch.testing.assert_close(rec.mass, ref, atol=ATOL, rtol=1e-4)


# ---- per-head BOS / top shares (opt-in) -------------------------------------------------------
def _eager_heads(model, ids, mask4d=None, last_only=False):
    """(L, B, H) BOS share and top share per query from eager attentions (output_attentions)."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(input_ids=ids, attention_mask=mask4d, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    att = torch.stack(att)  # (L, B, H, Tq, Tk)
    if last_only:
        att = att[:, :, :, -1:]
    col = att.sum(3)  # (L, B, H, Tk)
    n = att.shape[3]
    return col[..., 0] / n, col.max(-1).values / n


@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_per_head_shares_match_eager(gqa, bidirectional):
    model = _llama(gqa=gqa)
    B, T = 2, 10
    ids = torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(B, 1, T, T) if bidirectional else None
    bos_ref, top_ref = _eager_heads(model, ids, mask)
    with torch.no_grad(), record_mass(chunk_size=3, per_head=True) as rec:
        model(input_ids=ids, attention_mask=mask)
    assert rec.bos_share.shape == (3, B, 4) and rec.top_share.shape == (3, B, 4)
    torch.testing.assert_close(rec.bos_share, bos_ref, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(rec.top_share, top_ref, atol=ATOL, rtol=1e-4)
    assert (rec.top_share >= rec.bos_share).all() and (rec.top_share <= 1 + 1e-6).all()


def test_per_head_decode_step_is_the_newest_query():
    """A cached AR step: the shares are the newest query's row of each head."""
    model = _llama(gqa=True)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        out = model(input_ids=ids[:, :-1], use_cache=True)
        with record_mass(per_head=True, chunk_size=CHUNK) as rec:
            model(input_ids=ids[:, -1:], cache=out.past_key_values, use_cache=True)
    bos_ref, top_ref = _eager_heads(model, ids, last_only=True)
    torch.testing.assert_close(rec.bos_share, bos_ref, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(rec.top_share, top_ref, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_per_head_recording_leaves_layer_mass_bit_identical(causal):
    torch.manual_seed(0)
    model = TinyLM(test_config(causal=causal, n_kv_heads=2, init_std=0.3)).eval()
    ids = torch.randint(0, 63, (2, 11), generator=torch.Generator().manual_seed(11))
    am = torch.ones(2, 11, dtype=torch.long)
    am[1, -2:] = 0
    for mask in (None, am):
        with torch.no_grad(), record_mass(chunk_size=4) as plain:
            a = model(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad(), record_mass(chunk_size=4, per_head=True) as rec:
            b = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(plain.mass, rec.mass) and torch.equal(a, b)
        assert rec.bos_share.shape == (2, 2, 4) and (rec.bos_share <= rec.top_share).all()


def test_head_shares_known_answers():
    heads = torch.tensor([[[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])  # (B=1, H=2, T=3), 3 queries each
    bos, top = head_shares(heads, torch.tensor([[3, 3]]))
    torch.testing.assert_close(bos, torch.tensor([[1.0, 1 / 3]]))
    torch.testing.assert_close(top, torch.tensor([[1.0, 1 / 3]]))  # uniform over 3 keys: 1/3
    bos, top = head_shares(heads, torch.tensor([[0, 3]]))  # a head without queries: 0, not NaN
    assert bos[0, 0] == 0 and top[0, 0] == 0
    with record_mass(chunk_size=CHUNK) as rec:
        F.scaled_dot_product_attention(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4))
    with pytest.raises(RuntimeError, match="per_head=True"):
        _ = rec.bos_share
    q = torch.randn(1, 2, 3, 4)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 0, :] = False  # query 0 sees nothing
    with record_mass(per_head=True, chunk_size=CHUNK) as rec:
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    _, heads, nq = key_mass_per_head(q, q, attn_mask=mask, chunk_size=CHUNK)
    assert torch.equal(nq, torch.tensor([[2, 2]]))
    torch.testing.assert_close(rec.bos_share[0], heads[..., 0] / 2)
