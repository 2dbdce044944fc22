"""The sampler: F5-TTS's ODE run by the worker's own loop over the upstream DiT, alone or for several
requests' rows at once, its steps replayed as CUDA graphs.

What it does instead of upstream's ``CFM.sample`` (DESIGN.md: upstream is host-bound, ~1,340 kernel
launches per ODE step): everything constant across steps is computed once per run (both text embeddings,
their share of the input projection, the rotary table, the time grid); cond and uncond (classifier-free
guidance) run as one batched forward; on CUDA the mel length is padded up to a bucket and one captured
graph per bucket replays each step (``StepGraph``), the padded frames masked (a broadcast key-padding
bias, worker/engine/attention.py, and upstream's masked conv), so the valid frames are upstream's for the
same seed. ``RowJob`` is one request's text batch as one row; rows of unequal length share an ODE
(``_sample_rows``), each masked past its own length.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine import attention
from worker.engine.tts_load import N_MELS

log = logging.getLogger("worker.engine.tts")

# The sampler never makes a batch longer than this (upstream's CFM.sample default max_duration).
FRAME_CAP = 65536


class StepGraph:
    """One ODE step (batched CFG forward + Euler update) captured as a CUDA graph for one padded length."""

    def __init__(self, step, y: torch.Tensor, pool) -> None:
        self.y = y
        # The graph reads every tensor the step closes over (the rotary table, the static buffers) at the
        # addresses it had at capture: keep them alive as long as the graph, or the allocator hands that
        # memory to others and replays read garbage (seen on an H200: NaN audio once the rotary table of a
        # bucket had been freed and reused).
        self.step = step
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside capture: allocator and lazy kernel init
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            step()

    def replay(self) -> None:
        self.graph.replay()


class Sampler:
    """The DiT and everything the ODE loop keeps between runs (its captured graphs). ``F5Synth``
    (worker/engine/tts.py) is one: it adds the text, the reference and the vocoder around it."""

    def __init__(self, dit, device: str, *, bucket_frames: int = 1, cuda_graphs: bool = False,
                 compile_mode: str | None = None, length_snap: bool = False,
                 masked_rows: bool = False) -> None:
        self.dit, self.device = dit, device
        self.dtype = next(dit.parameters()).dtype
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.bucket = max(1, bucket_frames)
        # Snap (an option, off by default): round each batch's generated length UP to the bucket instead of
        # padding it, so every frame is generated and no mask is needed. It saves the key-padding bias (8%
        # at NFE 32 on an H200: docs/BENCHMARKS.md) but a batch then lasts up to one bucket longer than
        # upstream's, so the audio is no longer upstream's for the same seed.
        self.length_snap = length_snap and self.bucket > 1
        self._graphs: dict[int, tuple[StepGraph, dict[str, torch.Tensor]]] = {}
        # Graphs of batched runs, keyed (padded, rows): captured on first use (~0.5 s each on an H200),
        # least recently used dropped past the bound.
        self._batch_graphs: OrderedDict[tuple[int, int], tuple[StepGraph, dict[str, torch.Tensor]]] = \
            OrderedDict()
        self.batch_graphs_max = 32
        # Swappable so CPU tests can replay the very same step eagerly (no CUDA to capture on).
        self._graph_factory = StepGraph
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._forward = self._dit_forward
        if compile_mode:
            # Automatic dynamic shapes: the first bucket compiles static, the second recompiles with a
            # symbolic length that serves every other bucket (dynamic=False would compile each of the ~33
            # buckets and, past dynamo's recompile limit of 8, silently run the rest uncompiled).
            self._forward = torch.compile(self._dit_forward, mode=compile_mode, dynamic=None)
        if ((self.bucket > 1 or self.cuda_graphs) and not self.length_snap) or masked_rows:
            # Padded frames must not be attended to: upstream's math with the key mask as a broadcast
            # additive bias (worker/engine/attention.py), which keeps a fast SDPA kernel. Batched rows of
            # unequal lengths (``masked_rows``) are padded too, snapped or not.
            attention.install(self.dit)
        proj = self.dit.input_embed.proj
        # Input projection split by input: [x | cond | text]; only the x part changes across steps.
        self._w_x = proj.weight[:, :N_MELS]
        self._w_rest = proj.weight[:, N_MELS:]

    @property
    def max_frames(self) -> int:
        """The longest batch (reference + generated mel frames) the DiT can take: its text position
        table (8192 frames in F5-TTS 1.1) when it has one, else the sampler's cap."""
        embed = self.dit.text_embed
        return min(embed.precompute_max_pos, FRAME_CAP) if embed.extra_modeling else FRAME_CAP

    def _time_grid(self, steps: int, sway: float | None) -> torch.Tensor:
        from f5_tts.model.utils import get_epss_timesteps

        t = get_epss_timesteps(steps, device=self.device, dtype=self.dtype)
        if sway is not None:
            t = t + sway * (torch.cos(torch.pi / 2 * t) - 1 + t)
        return t

    def _noise(self, frames: int, seed: int) -> torch.Tensor:
        # Same stream as upstream's torch.manual_seed(seed); torch.randn(...), without touching global RNG.
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(frames, N_MELS, generator=gen, device=self.device, dtype=self.dtype)

    def _sample_fast(self, cond, ids, duration, steps, cfg, sway, seed,
                     check: Callable[[], None] = lambda: None) -> torch.Tensor:
        (mel,) = self._sample_rows([RowJob(cond, ids, duration, seed, steps, cfg, sway, 0, check)])
        if isinstance(mel, BaseException):
            raise mel
        return mel

    def _frames(self, job: RowJob) -> int:
        frames = min(max(max(job.ids.shape[1], job.cond.shape[1]) + 1, job.duration), FRAME_CAP)
        if self.length_snap:
            frames = min(math.ceil(frames / self.bucket) * self.bucket, FRAME_CAP)
        return frames

    def _row_const(self, job: RowJob, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The x-independent part of the input projection of one row, for (cond, uncond); uncond drops
        the audio too. Each [1, frames, dim], bias included."""
        dit, cond = self.dit, job.cond
        text_c = dit.text_embed(job.ids, frames, drop_text=False)
        text_u = dit.text_embed(job.ids, frames, drop_text=True)
        cond_full = F.pad(cond, (0, 0, 0, frames - cond.shape[1]))
        bias = dit.input_embed.proj.bias
        rest_c = torch.cat((cond_full, text_c), dim=-1) @ self._w_rest.T + bias
        rest_u = torch.cat((torch.zeros_like(cond_full), text_u), dim=-1) @ self._w_rest.T + bias
        return rest_c, rest_u

    def _sample_rows(self, jobs: Sequence[RowJob]) -> list[torch.Tensor | BaseException]:
        """Every job (same steps, sway and guidance on/off: `RowJob.key`) through one ODE: rows
        [cond_1..cond_R, uncond_1..uncond_R], each padded to the longest row's bucket and masked past its
        own length, so each row's frames are what it gets alone. One job's failing ``check`` (its
        deadline) stops that row's answer, not the others'."""
        rows = len(jobs)
        steps, sway = jobs[0].steps, jobs[0].sway
        frames = [self._frames(job) for job in jobs]
        padded = math.ceil(max(frames) / self.bucket) * self.bucket
        consts = [self._row_const(job, n) for job, n in zip(jobs, frames, strict=True)]
        const = torch.cat([F.pad(c[k], (0, 0, 0, padded - n)) for k in (0, 1)
                           for c, n in zip(consts, frames, strict=True)], dim=0)
        y = torch.cat([F.pad(self._noise(n, job.seed).unsqueeze(0), (0, 0, 0, padded - n))
                       for job, n in zip(jobs, frames, strict=True)], dim=0)
        mask = None
        # Graphs are shared by every length in a bucket, so they always mask (except exact-length
        # buckets, bucket_frames=1, which the bench uses to price the mask).
        # Rows of unequal length are masked past their own, snapped or not.
        shared_graph = not self.length_snap and self.cuda_graphs and self.bucket > 1
        if any(n != padded for n in frames) or shared_graph:
            lengths = torch.tensor(frames, device=self.device)[:, None]
            mask = (torch.arange(padded, device=self.device) < lengths).repeat(2, 1)
        cfgs = {job.cfg for job in jobs}
        cfg: float | torch.Tensor = jobs[0].cfg if len(cfgs) == 1 or jobs[0].cfg < 1e-5 else torch.tensor(
            [job.cfg for job in jobs], device=self.device, dtype=self.dtype).view(rows, 1, 1)
        errors: list[BaseException | None] = [None] * rows

        def check() -> None:
            for i, job in enumerate(jobs):
                if errors[i] is None:
                    try:
                        job.check()
                    except BaseException as exc:  # this row's job is over (its deadline): the others go on
                        errors[i] = exc
            if all(e is not None for e in errors):
                raise _RowsStopped

        t = self._time_grid(steps, sway)
        try:
            if self.cuda_graphs:
                y = self._run_graph(padded, y, const, mask, t, cfg, check)
            else:
                rope = self.dit.rotary_embed.forward_from_seq_len(padded)
                for i in range(steps):
                    check()
                    y = y + (t[i + 1] - t[i]) * self._velocity(y, const, mask, rope, t[i], cfg)
        except _RowsStopped:
            pass
        finally:
            self.dit.clear_cache()
        # Like upstream, the reference frames of the result are the reference itself. The mel of the
        # reference has one frame more than the caller's slice point (centered STFT), so this shows.
        return [errors[i] if errors[i] is not None else
                torch.cat((job.cond, y[i:i + 1, job.cond.shape[1]:frames[i]]), dim=1)
                for i, job in enumerate(jobs)]

    def _dit_forward(self, y, const, mask, rope, t) -> torch.Tensor:
        dit = self.dit
        rows = const.shape[0]  # 2R with guidance (cond_1..R, uncond_1..R), R without
        x = y.expand(rows, -1, -1) if y.shape[0] == 1 else y.repeat(rows // y.shape[0], 1, 1)
        h = x @ self._w_x.T + const
        h = dit.input_embed.conv_pos_embed(h, mask=mask) + h
        temb = dit.time_embed(t.reshape(1).repeat(rows))
        # The attention bias is built once per forward (inside the graph when captured), not per block.
        padding = None if mask is None else attention.KeyPadding.of(mask, h.dtype)
        for block in dit.transformer_blocks:
            h = block(h, temb, mask=padding, rope=rope)
        return dit.proj_out(dit.norm_out(h, temb))

    def _velocity(self, y, const, mask, rope, t, cfg) -> torch.Tensor:
        rows = y.shape[0]
        if not isinstance(cfg, torch.Tensor) and cfg < 1e-5:
            # Upstream skips the unconditional pass entirely without guidance (a batch never mixes
            # guided and unguided rows: `RowJob.key`).
            return self._forward(y, const[:rows], None if mask is None else mask[:rows], rope, t)
        pred, null = self._forward(y, const, mask, rope, t).chunk(2, dim=0)
        return pred + (pred - null) * cfg

    def _run_graph(self, padded, y, const, mask, t, cfg,
                   check: Callable[[], None] = lambda: None) -> torch.Tensor:
        rows = y.shape[0]
        if rows > 1:
            return self._run_batch_graph(padded, y, const, mask, t, cfg, check)
        entry = self._graphs.get(padded)
        if entry is None:
            log.info("tts: capturing a CUDA graph for %s frames", padded)
            entry = self._capture(padded, y, const, mask, t,
                                  torch.tensor(cfg, device=self.device, dtype=self.dtype))
            self._graphs[padded] = entry
        return self._replay(entry, y, const, mask, t, cfg, check)

    def _capture(self, padded, y, const, mask, t, cfg: torch.Tensor):
        """One ODE step (batched CFG forward + Euler update) over static buffers shaped like the inputs,
        captured as a graph; the buffers are refilled before each replay (`_replay`)."""
        bufs = {"y": y.clone(), "const": const.clone(), "mask": None if mask is None else mask.clone(),
                "t": t[0].clone(), "dt": (t[1] - t[0]).clone(), "cfg": cfg}
        rope = self.dit.rotary_embed.forward_from_seq_len(padded)

        def step() -> None:
            pred, null = self._forward(bufs["y"], bufs["const"], bufs["mask"], rope, bufs["t"]).chunk(2)
            bufs["y"].add_(bufs["dt"] * (pred + (pred - null) * bufs["cfg"]))

        return self._graph_factory(step, bufs["y"], self._pool), bufs

    def _replay(self, entry, y, const, mask, t, cfg, check: Callable[[], None]) -> torch.Tensor:
        graph, bufs = entry
        bufs["y"].copy_(y)
        bufs["const"].copy_(const)
        if mask is not None:
            bufs["mask"].copy_(mask)
        if isinstance(cfg, torch.Tensor):
            bufs["cfg"].copy_(cfg.reshape(bufs["cfg"].shape))
        else:
            bufs["cfg"].fill_(cfg)
        for i in range(len(t) - 1):
            check()
            bufs["t"].copy_(t[i])
            bufs["dt"].copy_(t[i + 1] - t[i])
            graph.replay()
        return bufs["y"].clone()

    def _run_batch_graph(self, padded, y, const, mask, t, cfg, check: Callable[[], None]) -> torch.Tensor:
        """The graph of a batched run: rows rounded up to a power of two (the extra rows repeat the last
        one and are dropped), so at most a few graphs per bucket; captured on first use, the least
        recently used dropped past ``batch_graphs_max``."""
        rows = y.shape[0]
        size = 1 << (rows - 1).bit_length()
        if size != rows:
            extra = size - rows

            def widen(x: torch.Tensor, per: int) -> torch.Tensor:  # [per*rows, ...] -> [per*size, ...]
                parts = x.chunk(per, dim=0)
                return torch.cat([torch.cat((p, p[-1:].expand(extra, *p.shape[1:]))) for p in parts])

            y, const = widen(y, 1), widen(const, 2)
            mask = None if mask is None else widen(mask, 2)
            if isinstance(cfg, torch.Tensor):
                cfg = widen(cfg, 1)
        # A batched graph always takes a mask (all true when every row fills the bucket): one graph per
        # key serves rows of any lengths.
        if mask is None:
            mask = torch.ones(2 * size, padded, device=self.device, dtype=torch.bool)
        key = (padded, size)
        entry = self._batch_graphs.get(key)
        if entry is None:
            log.info("tts: capturing a CUDA graph for %s rows of %s frames", size, padded)
            entry = self._capture(padded, y, const, mask, t,
                                  torch.ones(size, 1, 1, device=self.device, dtype=self.dtype))
            self._batch_graphs[key] = entry
            while len(self._batch_graphs) > self.batch_graphs_max:
                self._batch_graphs.popitem(last=False)
        self._batch_graphs.move_to_end(key)
        return self._replay(entry, y, const, mask, t, cfg, check)[:rows]

    def disable_graphs(self) -> None:
        self.cuda_graphs = False
        self._graphs.clear()
        self._batch_graphs.clear()

    def capture_buckets(self, max_frames: int) -> None:
        """Pre-capture the graphs of every bucket up to max_frames, so no request pays a capture."""
        if not self.cuda_graphs or self.bucket == 1:  # exact lengths: too many to pre-capture
            return
        with self._lock, torch.inference_mode():
            for padded in range(self.bucket, max_frames + self.bucket, self.bucket):
                if padded in self._graphs:
                    continue
                y = torch.zeros(1, padded, N_MELS, device=self.device, dtype=self.dtype)
                const = torch.zeros(2, padded, self.dit.dim, device=self.device, dtype=self.dtype)
                mask = None
                if not self.length_snap:
                    mask = torch.ones(2, padded, device=self.device, dtype=torch.bool)
                self._run_graph(padded, y, const, mask, self._time_grid(2, None), 2.0)



@dataclass
class RowJob:
    """One request's text batch, ready for the sampler: one row of an ODE, alone or beside others."""

    cond: torch.Tensor  # [1, ref mel frames, mels]
    ids: torch.Tensor  # [1, tokens]
    duration: int
    seed: int
    steps: int
    cfg: float
    sway: float | None
    ref_frames: int  # where the generated audio starts (the reference's length in hops)
    check: Callable[[], None]

    def key(self) -> tuple:
        """Jobs with equal keys can share one ODE: one time grid, guidance on or off for all."""
        return (self.steps, self.sway, self.cfg >= 1e-5)


class _RowsStopped(Exception):
    """Every row of a run has stopped (their jobs' deadlines): the ODE ends early."""

