"""worker.attention: upstream's attention math, the key mask as a broadcast bias."""

from __future__ import annotations

import pytest
import torch

from worker.attention import KeyPadding, KeyPaddingAttnProcessor, install


def _attention(pe_attn_head=None, seed=0):
    from f5_tts.model.modules import Attention, AttnProcessor

    torch.manual_seed(seed)
    attn = Attention(AttnProcessor(pe_attn_head=pe_attn_head, attn_mask_enabled=False), dim=64, heads=4,
                     dim_head=16).eval()
    return attn


def _rope(n: int):
    from x_transformers.x_transformers import RotaryEmbedding

    return RotaryEmbedding(16).forward_from_seq_len(n)


@pytest.mark.parametrize("pe_attn_head", [None, 2])
def test_without_a_mask_it_is_upstreams_processor_to_the_bit(pe_attn_head):
    attn = _attention(pe_attn_head)
    x = torch.randn(2, 37, 64)
    with torch.inference_mode():
        want = attn(x, rope=_rope(37))
        attn.processor = KeyPaddingAttnProcessor(pe_attn_head)
        got = attn(x, rope=_rope(37))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("pe_attn_head", [None, 2])
def test_padded_keys_are_invisible_and_padded_rows_zero(pe_attn_head):
    """Rows padded to 64 frames with garbage after each row's length: the valid frames equal the same
    rows computed unpadded, as upstream's processor with its (expanded) key mask computes them."""
    attn = _attention(pe_attn_head, seed=1)
    attn.processor = KeyPaddingAttnProcessor(pe_attn_head)
    lengths = [50, 23]
    x = torch.randn(2, 64, 64) * 10
    keep = torch.arange(64).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    with torch.inference_mode():
        padded = attn(x, mask=KeyPadding.of(keep, x.dtype), rope=_rope(64))
        from_bool = attn(x, mask=keep, rope=_rope(64))
        for row, n in enumerate(lengths):
            alone = attn(x[row:row + 1, :n], rope=_rope(n))
            torch.testing.assert_close(padded[row, :n], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.all(padded[row, n:] == 0)
    torch.testing.assert_close(from_bool, padded, rtol=0, atol=0)


def test_the_bias_broadcasts_over_heads_and_queries():
    keep = torch.tensor([[True, True, False], [True, False, False]])
    pad = KeyPadding.of(keep, torch.float16)
    assert pad.bias.shape == (2, 1, 1, 3) and pad.bias.dtype == torch.float16
    assert pad.bias[0, 0, 0].tolist() == [0, 0, float("-inf")]
    assert pad.rows(1).keep.shape == (1, 3) and pad.rows(1).bias.shape == (1, 1, 1, 3)


def test_install_replaces_every_blocks_processor_once():
    from f5_tts.model.backbones.dit import DiT

    from worker.tiny import TINY_DIT

    dit = DiT(**dict(TINY_DIT, pe_attn_head=1), text_num_embeds=10, mel_dim=100)
    install(dit)
    procs = [block.attn.processor for block in dit.transformer_blocks]
    assert all(isinstance(p, KeyPaddingAttnProcessor) and p.pe_attn_head == 1 for p in procs)
    install(dit)
    assert [block.attn.processor for block in dit.transformer_blocks] == procs


def test_a_chosen_sdpa_backend_computes_the_same():
    from torch.nn.attention import SDPBackend

    attn = _attention(seed=2)
    attn.processor = KeyPaddingAttnProcessor()
    x = torch.randn(2, 40, 64)
    keep = torch.arange(40).unsqueeze(0) < torch.tensor([[40], [17]])
    with torch.inference_mode():
        want = attn(x, mask=keep, rope=_rope(40))
        attn.processor.backends = [SDPBackend.MATH]
        got = attn(x, mask=keep, rope=_rope(40))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
