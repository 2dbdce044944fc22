"""What a key-padding mask costs in F5-TTS's DiT on one GPU, per attention kernel, alone and batched.

Exact-length synthesis and batching of requests both need padded frames that no valid frame attends to.
Upstream's masked path (a boolean mask expanded to [b, heads, n, n]) measured 0.65x upstream against
0.40x unmasked on an H200 (docs/BENCHMARKS.md). This bench prices the alternatives side by side, on the
full-size F5TTS_v1_Base DiT with random weights in fp16:

1. one attention call at F5's shapes (16 heads x 64, padded to a 64-frame bucket) for 2, 8, 16 and 32
   rows (1, 4, 8, 16 requests with guidance), per kernel: no mask (flash), upstream's expanded boolean
   mask, a broadcast [b,1,1,n] boolean mask, a broadcast additive bias (default, efficient and cuDNN
   backends), FlexAttention with a length-reading score_mod (graph-safe for any length in a bucket) and
   with a block mask built from the lengths;
2. one whole ODE step (CFG forward + Euler update) replayed from a CUDA graph, per kernel and per
   number of requests, against the unmasked step at the same padded length and the exact-length step;
3. what capturing one step graph costs (the price of graphs per exact length on demand).

    python bench/gpu_attention.py            # on the GPU machine (wheels: bench/gpu_wheels.sh)
    python bench/gpu_attention.py --tiny     # CPU smoke run of the same code on the tiny DiT

Prints markdown tables, then one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADS, HEAD_DIM = 16, 64
BUCKET = 64


# -- attention kernels -----------------------------------------------------------------------------
class MaskCtx:
    """Per-step mask state shared by every layer: built once per step, read by each attention call."""

    def __init__(self, lengths, padded: int, device: str, dtype) -> None:
        import torch

        self.lengths = lengths  # [rows] int32 on device
        self.padded = padded
        keep = torch.arange(padded, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # [rows, P]
        self.keep = keep
        self.bool_b11n = keep[:, None, None, :]
        bias = torch.zeros(keep.shape, device=device, dtype=dtype)
        self.bias_b11n = bias.masked_fill(~keep, float("-inf"))[:, None, None, :]
        self.block_mask = None
        self.dense_block_mask = None


def kernel_fns(tiny: bool):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def nomask(q, k, v, ctx):
        return F.scaled_dot_product_attention(q, k, v)

    def upstream(q, k, v, ctx):
        m = ctx.keep[:, None, None, :].expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    def bool_b11n(q, k, v, ctx):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.bool_b11n)

    def bias_b11n(q, k, v, ctx):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.bias_b11n)

    def backend(name):
        be = getattr(SDPBackend, name)

        def fn(q, k, v, ctx):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.bias_b11n)

        return fn

    fns = {"nomask": nomask, "upstream-expanded-bool": upstream, "bool-b11n": bool_b11n,
           "bias-b11n": bias_b11n}
    if not tiny:
        fns["efficient-bias"] = backend("EFFICIENT_ATTENTION")
        fns["cudnn-bias"] = backend("CUDNN_ATTENTION")
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)

            def flex_score(q, k, v, ctx):
                lengths = ctx.lengths

                def score_mod(score, b, h, qi, kv):
                    return torch.where(kv < lengths[b], score, -float("inf"))

                return flex(q, k, v, score_mod=score_mod, block_mask=ctx.dense_block_mask)

            def flex_block(q, k, v, ctx):
                return flex(q, k, v, block_mask=ctx.block_mask)

            fns["flex-score-mod"] = flex_score
            fns["flex-block-mask"] = flex_block
        except Exception as exc:  # a missing feature is a result, not a crash
            print(f"# flex_attention unavailable: {exc}", file=sys.stderr)
    return fns


def attach_block_masks(ctx: MaskCtx, rows: int, device: str) -> None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError:
        return
    lengths = ctx.lengths

    def keep(b, h, q, kv):
        return kv < lengths[b]

    def everything(b, h, q, kv):
        return kv >= 0

    ctx.block_mask = create_block_mask(keep, rows, None, ctx.padded, ctx.padded, device=device)
    ctx.dense_block_mask = create_block_mask(everything, rows, None, ctx.padded, ctx.padded, device=device)


class Processor:
    """Upstream's AttnProcessor math with a swappable attention kernel and a shared mask context."""

    def __init__(self, original, fn, ctx_ref: dict) -> None:
        self.pe_attn_head = getattr(original, "pe_attn_head", None)
        self.fn = fn
        self.ctx_ref = ctx_ref

    def __call__(self, attn, x, mask=None, rope=None):
        from x_transformers.x_transformers import apply_rotary_pos_emb

        b = x.shape[0]
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        hd = k.shape[-1] // attn.heads
        q = q.view(b, -1, attn.heads, hd).transpose(1, 2)
        k = k.view(b, -1, attn.heads, hd).transpose(1, 2)
        v = v.view(b, -1, attn.heads, hd).transpose(1, 2)
        if attn.q_norm is not None:
            q = attn.q_norm(q)
        if attn.k_norm is not None:
            k = attn.k_norm(k)
        if rope is not None:
            freqs, _ = rope
            if self.pe_attn_head is not None:
                pn = self.pe_attn_head
                q[:, :pn] = apply_rotary_pos_emb(q[:, :pn], freqs, 1.0)
                k[:, :pn] = apply_rotary_pos_emb(k[:, :pn], freqs, 1.0)
            else:
                q = apply_rotary_pos_emb(q, freqs, 1.0)
                k = apply_rotary_pos_emb(k, freqs, 1.0)
        out = self.fn(q, k, v, self.ctx_ref["ctx"])
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * hd).to(q.dtype)
        out = attn.to_out[0](out)
        if mask is not None:
            out = out.masked_fill(~mask.unsqueeze(-1), 0.0)
        return out


# -- timing ----------------------------------------------------------------------------------------
def cuda_time(fn, iters: int, repeats: int, device: str) -> float:
    """Median over `repeats` of the mean seconds per call of `iters` calls."""
    import torch

    fn()
    if device != "cuda":
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t0) / iters)
        return statistics.median(out)
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / 1000 / iters)
    return statistics.median(out)


def lengths_for(requests: int, valid: int, padded: int) -> list[int]:
    """Per-request valid lengths inside one bucket (the longest fills it), one per CFG row pair."""
    spread = [max(1, valid - (i * (padded // 2)) // max(requests, 1)) for i in range(requests)]
    spread[0] = valid
    return spread + spread  # rows: [cond of each request | uncond of each request]


def bench_kernels(args, device, dtype, fns) -> list[dict]:
    import torch

    rows_out = []
    padded = args.padded
    for requests in args.requests:
        rows = 2 * requests
        lens = torch.tensor(lengths_for(requests, args.valid, padded), device=device, dtype=torch.int32)
        ctx = MaskCtx(lens, padded, device, dtype)
        if device == "cuda":
            attach_block_masks(ctx, rows, device)
        q, k, v = (torch.randn(rows, HEADS, padded, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
        ref = fns["upstream-expanded-bool"](q, k, v, ctx)
        row = {"requests": requests, "rows": rows, "padded": padded}
        if requests == 1:
            n = args.valid
            qn, kn, vn = q[:, :, :n], k[:, :, :n], v[:, :, :n]
            row["exact-nomask"] = cuda_time(partial(fns["nomask"], qn, kn, vn, ctx), args.iters, args.repeats,
                                            device)
        for name, fn in fns.items():
            try:
                got = fn(q, k, v, ctx)
                if name != "nomask":
                    valid = ctx.keep[:, None, :, None]
                    err = float(((got - ref).abs() * valid).max())
                    row[f"{name}:maxerr"] = err
                row[name] = cuda_time(partial(fn, q, k, v, ctx), args.iters, args.repeats, device)
            except Exception as exc:
                row[name] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
        rows_out.append(row)
    return rows_out


# -- whole ODE steps from graphs --------------------------------------------------------------------
def build_dit(tiny: bool, device: str, dtype):
    import torch
    from f5_tts.model.backbones.dit import DiT

    from worker.engine import tts_load

    if tiny:
        from devtools import tiny as tiny_mod

        arch = dict(tiny_mod.TINY_DIT)
    else:
        arch = tts_load.load_arch("F5TTS_v1_Base")
    torch.manual_seed(0)
    dit = DiT(**arch, text_num_embeds=2545, mel_dim=tts_load.N_MELS)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.02)
    return dit.to(dtype).to(device).eval()


def make_step(dit, fn, ctx_ref, y, const, mask, rope, t, dt, cfg):
    """One Euler step for R requests: y [R,P,100]; const [2R,P,D]; rows ordered [cond... | uncond...]."""
    import torch

    w_x = dit.input_embed.proj.weight[:, :100]
    procs = {}
    for block in dit.transformer_blocks:
        procs[id(block)] = block.attn.processor
        block.attn.processor = Processor(block.attn.processor, fn, ctx_ref)

    def step() -> None:
        rows = const.shape[0]
        h = torch.cat((y, y)) @ w_x.T + const
        h = dit.input_embed.conv_pos_embed(h, mask=mask) + h
        temb = dit.time_embed(t.expand(rows))
        for block in dit.transformer_blocks:
            h = block(h, temb, mask=mask, rope=rope)
        out = dit.proj_out(dit.norm_out(h, temb))
        pred, null = out.chunk(2)
        y.add_(dt * (pred + (pred - null) * cfg))

    def restore() -> None:
        for block in dit.transformer_blocks:
            block.attn.processor = procs[id(block)]

    return step, restore


def capture(step, device):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def bench_steps(args, device, dtype, fns) -> dict:
    import torch

    dit = build_dit(args.tiny, device, dtype)
    dim = dit.dim
    out: dict = {"rows": [], "capture_s": None}
    with torch.inference_mode():
        t = torch.tensor(0.3, device=device, dtype=dtype)
        dt = torch.tensor(1 / 32, device=device, dtype=dtype)
        cfg = torch.tensor(2.0, device=device, dtype=dtype)
        for requests in args.requests:
            rows = 2 * requests
            row: dict = {"requests": requests}
            shapes = [("nomask-padded", args.padded, None)]
            if requests == 1:
                shapes.insert(0, ("exact-nomask", args.valid, None))
            lens = torch.tensor(lengths_for(requests, args.valid, args.padded), device=device,
                                dtype=torch.int32)
            ctx = MaskCtx(lens, args.padded, device, dtype)
            if device == "cuda":
                attach_block_masks(ctx, rows, device)
            masked = [(name, args.padded, name) for name in fns if name != "nomask"]
            for label, frames, kernel in shapes + masked:
                y = torch.randn(requests, frames, 100, device=device, dtype=dtype)
                const = torch.randn(rows, frames, dim, device=device, dtype=dtype)
                rope = dit.rotary_embed.forward_from_seq_len(frames)
                mask = ctx.keep if kernel is not None else None
                fn = fns[kernel] if kernel is not None else fns["nomask"]
                step, restore = make_step(dit, fn, {"ctx": ctx}, y, const, mask, rope, t, dt, cfg)
                try:
                    if device == "cuda" and not args.eager:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        graph = capture(step, device)
                        torch.cuda.synchronize()
                        if label == "exact-nomask":
                            out["capture_s"] = time.perf_counter() - t0
                        row[label] = cuda_time(graph.replay, args.step_iters, args.repeats, device)
                        del graph
                    else:
                        row[label] = cuda_time(step, args.step_iters, args.repeats, device)
                except Exception as exc:
                    row[label] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
                finally:
                    restore()
            out["rows"].append(row)
    return out


def fmt(v) -> str:
    return f"{v * 1000:.3f}" if isinstance(v, float) else str(v)


def markdown(kernels: list[dict], steps: dict, fns) -> str:
    names = ["exact-nomask", *fns]
    lines = ["Attention call, ms (rows = 2 x requests; padded to one bucket)", "",
             "| requests | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for r in kernels:
        lines.append(f"| {r['requests']} | " + " | ".join(fmt(r.get(n, "-")) for n in names) + " |")
    snames = ["exact-nomask", "nomask-padded", *[n for n in fns if n != "nomask"]]
    lines += ["", "Whole ODE step (CFG forward + Euler update) from a CUDA graph, ms", "",
              "| requests | " + " | ".join(snames) + " |", "| --- |" + " --- |" * len(snames)]
    for r in steps["rows"]:
        lines.append(f"| {r['requests']} | " + " | ".join(fmt(r.get(n, "-")) for n in snames) + " |")
    if steps.get("capture_s") is not None:
        lines += ["", f"Capturing one step graph (2 warm-up steps + capture): {steps['capture_s']:.3f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny DiT on the CPU: a smoke run")
    ap.add_argument("--requests", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--valid", type=int, default=1190, help="valid frames of the longest request")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--step-iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eager", action="store_true", help="time steps eagerly, no graphs")
    args = ap.parse_args(argv)
    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_attention: no CUDA device; use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    if args.tiny:
        args.requests, args.valid, args.iters, args.step_iters, args.repeats = [1, 2], 100, 2, 1, 1
    args.padded = -(-args.valid // BUCKET) * BUCKET
    dtype = torch.float16 if device == "cuda" else torch.float32
    from bench.gpu_tts import import_f5_for_inference

    import_f5_for_inference()
    fns = kernel_fns(args.tiny)
    kernels = bench_kernels(args, device, dtype, fns)
    steps = bench_steps(args, device, dtype, fns)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "valid": args.valid, "padded": args.padded,
              "kernels": kernels, "steps": steps}
    print(markdown(kernels, steps, fns))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
