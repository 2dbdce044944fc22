"""Key-padding attention for F5-TTS's DiT: upstream's attention math, the padding mask passed cheaply.

The engine pads a batch's mel length up to a bucket so one CUDA graph serves every length in it; padded
frames must then be invisible to the valid ones (every other op in the DiT is per frame, except the conv
position embedding, which upstream already masks). Upstream's processor (f5_tts 1.1.22 AttnProcessor,
torch backend) expands its boolean mask to [rows, heads, n, n] before scaled_dot_product_attention, which
rules out the flash kernel and measured 13.64 ms per ODE step on an H200 against 9.62 ms unpadded
(bench/gpu_attention.py). The same mask as an additive bias broadcast over heads and queries,
[rows, 1, 1, n] (0 for a valid key, -inf for a padded one), built once per DiT forward, measured 10.64 ms.

`KeyPaddingAttnProcessor` does exactly what upstream's does (projections, qk-norm, rotary embedding on all
or the first `pe_attn_head` heads, SDPA, output projection, padded query rows zeroed), except that the key
mask reaches SDPA as that bias, whatever upstream's `attn_mask_enabled` says (upstream leaves keys unmasked
when it is off, its v1 default: fine for one unpadded request, wrong for a padded one). Without a mask it
runs upstream's op sequence unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KeyPadding:
    """Which frames of each row are real (``keep``: [rows, n] bool) and the same as an additive attention
    bias (``bias``: [rows, 1, 1, n], 0 or -inf, in the attention's dtype). Built once per DiT forward and
    handed to every block in place of upstream's boolean mask."""

    keep: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, keep: torch.Tensor, dtype: torch.dtype) -> KeyPadding:
        bias = torch.zeros(keep.shape, device=keep.device, dtype=dtype).masked_fill(~keep, float("-inf"))
        return cls(keep, bias[:, None, None, :])

    def rows(self, n: int) -> KeyPadding:
        return KeyPadding(self.keep[:n], self.bias[:n])


class KeyPaddingAttnProcessor:
    """Drop-in for f5_tts.model.modules.AttnProcessor (torch backend) taking ``mask`` as None, a
    `KeyPadding`, or upstream's boolean [rows, n] mask (converted on the fly)."""

    def __init__(self, pe_attn_head: int | None = None) -> None:
        self.pe_attn_head = pe_attn_head
        # SDPA backends to choose from (torch.nn.attention.SDPBackend); None: torch's own choice.
        self.backends: list | None = None

    def __call__(self, attn, x: torch.Tensor, mask: KeyPadding | torch.Tensor | None = None,
                 rope=None) -> torch.Tensor:
        from x_transformers.x_transformers import apply_rotary_pos_emb

        if isinstance(mask, torch.Tensor):
            mask = KeyPadding.of(mask, x.dtype)
        batch_size = x.shape[0]
        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.q_norm is not None:
            query = attn.q_norm(query)
        if attn.k_norm is not None:
            key = attn.k_norm(key)
        if rope is not None:
            freqs, xpos_scale = rope
            q_scale, k_scale = (xpos_scale, xpos_scale**-1.0) if xpos_scale is not None else (1.0, 1.0)
            if self.pe_attn_head is not None:
                pn = self.pe_attn_head
                query[:, :pn, :, :] = apply_rotary_pos_emb(query[:, :pn, :, :], freqs, q_scale)
                key[:, :pn, :, :] = apply_rotary_pos_emb(key[:, :pn, :, :], freqs, k_scale)
            else:
                query = apply_rotary_pos_emb(query, freqs, q_scale)
                key = apply_rotary_pos_emb(key, freqs, k_scale)
        bias = None if mask is None else mask.bias
        if self.backends is None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0,
                                                 is_causal=False)
        else:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.backends):
                out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0,
                                                     is_causal=False)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if mask is not None:
            out = out.masked_fill(~mask.keep.unsqueeze(-1), 0.0)
        return out


def install(dit) -> None:
    """Give every block of ``dit`` the key-padding processor (same pe_attn_head as upstream's)."""
    for block in dit.transformer_blocks:
        current = block.attn.processor
        if not isinstance(current, KeyPaddingAttnProcessor):
            block.attn.processor = KeyPaddingAttnProcessor(getattr(current, "pe_attn_head", None))
