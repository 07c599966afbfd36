"""The ConvNN pipeline in plain torch operators, so it exports to ONNX: MatMul -> TopK -> Gather -> taps.

The torch backend's kernels run custom ops (convnn::select_topk, convnn::gather_taps) that no ONNX exporter
knows; `ExportKernels` computes the same steps from standard operators instead:
  select        the dense affinity block (the torch backend's float formula), the self slot masked to -inf,
                then TopK. ONNX TopK puts equal values lower index first (onnxruntime keeps that rule), which
                is the spec's tie rule, so no re-sort is needed.
  gather_taps   one Gather of the K neighbour rows, then the taps as a MatMul (full) or a weighted sum
                (depthwise).
  candidates    explicit candidates are graph inputs or constants; a seeded evaluation draw is computed when
                the graph is exported and stored as a constant (a training draw cannot be exported).
`export_zoo_module` exports a zoo nn.Module (convnn.backends.torch.zoo_module: from_zoo, from_checkpoint) in
evaluation mode with a dynamic batch axis. Fixed at export time, and written to the model's metadata: the image
size (so every layer's map size and token count), the channels, the dtype (float32), and the evaluation
candidate draw of layers with sampling='random' (the draw seeded by the layer's path: a constant of the graph).
The graphs come from torch's TorchScript-based exporter (torch.onnx.export(dynamo=False)): it keeps the batch axis
symbolic through the pipeline's host-side checks and writes a graph in well under a second, where the
torch.export-based exporter specializes the batch size and takes several seconds per graph.
"""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from convnn.grid import Grid
from convnn.kernels import PathChoice, PathRequest, check_grid

from .arrays import GlobalRngKey, SeedTensorKey, TorchRngKey, spec_draw
from .kernels import RunOptions, TorchKernels, split_heads
from .selection import affinity_block, gather_rows, grid_block, paired_affinity

EXPORT_PATH = "plain torch operators for ONNX: dense affinities, TopK (ties to the lower index), Gather, taps"


class _ExportNamespace:
    """The Array API namespace of torch, with sort as TopK (the TorchScript exporter has no stable Sort; TopK
    over the whole axis sorts, equal values lower index first)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch_xp, name)

    @staticmethod
    def sort(x: torch.Tensor, /, *, axis: int = -1, descending: bool = False, stable: bool = True) -> torch.Tensor:
        return torch.topk(x, x.shape[axis], dim=axis, largest=descending, sorted=True).values


class ExportKernels(TorchKernels):
    """TorchKernels built from standard operators only (see the module docstring); CPU, no fused path."""

    xp = _ExportNamespace()
    path_name = EXPORT_PATH
    backend_name = "torch (ONNX export)"

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__("cpu", RunOptions(deterministic=True, fused=False, check_inputs=False))
        self.seed = seed  # the evaluation draw's seed of a module whose key reads a buffer (SeedTensorKey)

    def choose_path(self, request: PathRequest) -> PathChoice:
        return PathChoice(EXPORT_PATH)

    def draw_candidates(self, key: TorchRngKey, n_tokens: int, count: int) -> torch.Tensor:
        """The spec's draw for the key's seed, fixed when the graph is exported (a constant of the graph)."""
        if isinstance(key, GlobalRngKey):
            raise ValueError("a training-mode candidate draw (fresh per call) cannot be exported; call "
                             "module.eval() first, so the layer uses its fixed evaluation draw")
        if isinstance(key, SeedTensorKey):
            if self.seed is None:
                raise ValueError("the layer's sample_seed buffer cannot be read while exporting; export through "
                                 "convnn.backends.torch.onnx_export, which reads it first")
            seed = self.seed
        else:
            seed = int(key.seed)
        return torch.tensor(spec_draw(seed, int(n_tokens), int(count)), dtype=torch.int64)

    def select(self, keys: torch.Tensor, queries: np.ndarray, cand: Optional[torch.Tensor], *, k: int, metric: str,
               self_first: bool, heads: int, query_feats: Optional[torch.Tensor] = None,
               grid: Optional[Grid] = None) -> torch.Tensor:
        """idx [B, H, Nq, K] int64 in rank order from one dense affinity block and TopK (no gradient)."""
        check_grid(grid, metric, heads)
        b = keys.shape[0]
        q_tok = torch.as_tensor(queries, dtype=torch.int64)
        keys = keys.detach()
        qf = keys.index_select(1, q_tok) if query_feats is None else query_feats.detach()
        if keys.dtype in (torch.float16, torch.bfloat16):
            keys, qf = keys.float(), qf.float()
        kh, qh = split_heads(keys, heads), split_heads(qf, heads)  # [G, N, f], [G, Nq, f]
        if cand is not None and cand.ndim == 2 and heads > 1:
            cand = cand[:, None, :].expand(b, heads, cand.shape[-1]).reshape(-1, cand.shape[-1])
        if cand is None:
            ck, cids = kh, torch.arange(kh.shape[1], dtype=torch.int64)
        elif cand.ndim == 1:
            ck, cids = kh.index_select(1, cand), cand
        else:
            ck, cids = gather_rows(kh, cand), cand
        aff = affinity_block(metric, qh, ck)  # [G, Nq, S]
        row_ids = cids[None, :] if cids.ndim == 1 else cids[:, None, :]  # [1, S] or [G, 1, S]
        if grid is not None:
            aff = aff - grid_block(grid, q_tok[:, None], row_ids, aff.dtype)
        slots = k - 1 if self_first else k
        if self_first:
            aff = aff.masked_fill(row_ids == q_tok[:, None], -math.inf)
        parts = []
        if self_first:
            parts.append(q_tok[None, :, None].expand(aff.shape[0], q_tok.shape[0], 1))
        if slots > 0:
            _, pos = torch.topk(aff, slots, dim=-1, largest=True, sorted=True)
            if cids.ndim == 1:
                parts.append(cids[pos])
            else:
                parts.append(torch.gather(cids[:, None, :].expand(-1, pos.shape[1], -1), -1, pos))
        idx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return idx.reshape(b, heads, q_tok.shape[0], k)

    def slot_affinity(self, keys: torch.Tensor, queries: np.ndarray, idx: torch.Tensor, *, metric: str, heads: int,
                      query_feats: Optional[torch.Tensor] = None, grid: Optional[Grid] = None) -> torch.Tensor:
        """[B, H, Nq, K] affinities of each query with its slots, from the gathered rows."""
        check_grid(grid, metric, heads)
        b, _, nq, k = idx.shape
        q_tok = torch.as_tensor(queries, dtype=torch.int64)
        qf = keys.index_select(1, q_tok) if query_feats is None else query_feats
        dtype = keys.dtype
        if dtype in (torch.float16, torch.bfloat16):
            keys, qf = keys.float(), qf.float()
        if keys.shape[-1] == 0:  # no feature columns (position selection on a grid): only the coordinate part
            aff = torch.zeros(idx.shape, dtype=keys.dtype)
        else:
            rows = gather_rows(split_heads(keys, heads), idx.reshape(b * heads, nq, k))  # [G, Nq, K, f]
            aff = paired_affinity(metric, split_heads(qf, heads), rows).reshape(b, heads, nq, k)
        if grid is not None:  # the exact coordinate part of the offsets (SPEC section 4, step 1)
            aff = aff - grid_block(grid, q_tok[None, None, :, None], idx, aff.dtype)
        return aff.to(dtype)

    def gather_taps(self, values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor],
                    weight: torch.Tensor, *, taps: str) -> torch.Tensor:
        """y [B, Nq, O] (no bias): one gather of the neighbour rows, then the taps."""
        b, heads, nq, k = idx.shape
        c = values.shape[-1]
        if rho is not None and rho.dtype != values.dtype:
            rho = rho.to(values.dtype)
        g = gather_rows(split_heads(values, heads), idx.reshape(b * heads, nq, k))  # [B*h, Nq, K, C/h]
        if rho is not None:
            g = g * rho.reshape(b * heads, nq, k)[..., None]
        g = merge_heads_slots(g, b, heads)  # [B, Nq, K, C], head h on channel group h
        if taps == "depthwise":
            return torch.sum(g * weight.transpose(0, 1), dim=2)
        return g.reshape(b, nq, k * c) @ weight.permute(2, 1, 0).reshape(k * c, weight.shape[0])


def merge_heads_slots(g: torch.Tensor, batch: Any, heads: int) -> torch.Tensor:
    """[B*h, Nq, K, d] -> [B, Nq, K, h*d] (the inverse of split_heads on the channel axis)."""
    if heads == 1:
        return g
    _, nq, k, d = g.shape
    return g.reshape(batch, heads, nq, k, d).permute(0, 2, 3, 1, 4).reshape(batch, nq, k, heads * d)


def kvt_graph(x: torch.Tensor, params: Mapping[str, torch.Tensor], k: int, heads: int) -> torch.Tensor:
    """KVT attention from standard operators: TopK of the scores (ties to the lower key index), a keep-mask made
    by scattering ones (the backend's in-place boolean scatter does not trace), then masked softmax attention."""
    from .attention import masked_attention

    q = split_heads(torch.nn.functional.linear(x, params["wq"]), heads)
    kk = split_heads(torch.nn.functional.linear(x, params["wk"]), heads)
    scores = torch.matmul(q, kk.transpose(-1, -2))
    pos = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
    mask = torch.zeros_like(scores).scatter(-1, pos, torch.ones(pos.shape, dtype=scores.dtype)) > 0
    return masked_attention(x, params, mask, heads=heads)


def layer_norm_graph(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis with its width as a constant (the exporter needs a static normalized shape)."""
    return torch.nn.functional.layer_norm(x, (int(gamma.shape[0]),), gamma, beta, eps)


# ----------------------------------------------------------------------------- zoo models
DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # TopK's largest/sorted attributes need 11; the TorchScript exporter writes up to 20
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def check_opset(opset: Any) -> int:
    """The opset as an int, refused by name outside the range the exporter writes."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ValueError(f"opset={opset!r} is not allowed; choose an int from {OPSETS.start} to {OPSETS.stop - 1}")
    return opset


def _export_backend() -> Any:
    """A TorchBackend whose ConvNN ops and KVT attention run on standard operators (CPU)."""
    from .backend import TorchBackend

    backend = TorchBackend(device="cpu", fused=False, check_inputs=False)
    backend.kernels = ExportKernels()
    backend.layer_norm = layer_norm_graph
    backend.kvt_attention = lambda x, params, k, *, heads=1, **kw: kvt_graph(x, params, k, heads)
    return backend


class _ZooForward(torch.nn.Module):
    """logits of a ZooModule's parameters through a zoo model built on the export backend (evaluation mode)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        from convnn.models.registry import create_model

        cfg = module.zoo_config
        self.module = module
        self.zoo = create_model(cfg["name"], backend=_export_backend(), num_classes=cfg["num_classes"],
                                **cfg["options"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits, _ = self.zoo.apply(self.module.params_tree(), self.module.state_tree(), images, train=False,
                                   rng=None)
        return logits


@dataclass(frozen=True)
class ExportResult:
    """What export_zoo_module wrote: the model, its metadata, and the check against the torch module."""

    model: Any  # onnx.ModelProto
    metadata: dict[str, str]
    max_abs_diff: Optional[float]  # onnxruntime vs the torch module on the example batch (None: not checked)
    path: Optional[str] = None


def image_size_of(module: torch.nn.Module) -> int:
    """The image side a zoo module expects: the checkpoint's training resize, else the model's image_size, else 32
    (the CIFAR-native VGGs take any size; 32 is what the zoo trains them at)."""
    resize = getattr(module, "resize", None)
    if resize:
        return int(resize)
    return int(module.zoo_config["options"].get("image_size") or 32)


def export_metadata(module: torch.nn.Module, image_size: int, channels: int, opset: int) -> dict[str, str]:
    """The facts an exported model carries (ONNX metadata_props): the model and what the graph fixed."""
    cfg = module.zoo_config
    opts = cfg["options"]
    sampled = opts.get("sampling") == "random"
    import convnn

    return {
        "convnn.model": str(cfg["name"]),
        "convnn.num_classes": str(cfg["num_classes"]),
        "convnn.options": json.dumps(opts, sort_keys=True, default=str),
        "convnn.version": str(getattr(convnn, "__version__", "unknown")),
        "convnn.input": f"{INPUT_NAME}: float32 [batch, {channels}, {image_size}, {image_size}] (batch dynamic)",
        "convnn.output": f"{OUTPUT_NAME}: float32 [batch, {cfg['num_classes']}]",
        "convnn.fixed_at_export": (
            f"image size {image_size}x{image_size} (every layer's map size and token count), {channels} channels, "
            "float32, evaluation mode (dropout off, batch-norm running statistics)"
            + ("; the evaluation candidate draw of sampling='random' layers (seeded by eval_seed and the layer's "
               "path) is a constant of the graph" if sampled else "; no candidate draw (sampling is not 'random')")),
        "convnn.tie_rule": "ONNX TopK: equal affinities keep the lower token index first (the spec's rule)",
        "convnn.opset": str(opset),
    }


def export_zoo_module(module: torch.nn.Module, path: Union[str, "os.PathLike[str]", None] = None, *,
                      opset: int = DEFAULT_OPSET, batch_size: int = 2, image_size: Optional[int] = None,
                      verify: bool = True, seed: int = 0) -> ExportResult:
    """Export a zoo nn.Module (from_zoo / from_checkpoint) to ONNX with a dynamic batch axis.

    The example batch (batch_size random images, the model's image size unless image_size is given) traces
    the graph; batch_size >= 2 keeps every batch-sized axis symbolic. verify: run the exported graph in
    onnxruntime on that batch and report the largest difference from the torch module (needs onnxruntime).
    Writes the model to `path` when given.
    """
    import onnx

    opset = check_opset(opset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 2 (a batch of 1 would let the tracer fix "
                         "batch-sized axes)")
    if not hasattr(module, "zoo_config") or not callable(getattr(module, "params_tree", None)):
        raise TypeError(f"module must be a zoo module from convnn.backends.torch.zoo_module (from_zoo or "
                        f"from_checkpoint), got {type(module).__name__}")
    size = int(image_size) if image_size is not None else image_size_of(module)
    if size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int")
    channels = int(module.zoo_config["options"].get("in_chans", 3))
    module = module.to("cpu").eval()
    wrapper = _ZooForward(module).eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn((batch_size, channels, size, size), generator=gen, dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on the door's shape checks: sizes other than batch are fixed
        torch.onnx.export(wrapper, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    metadata = export_metadata(module, size, channels, opset)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "convnn"
    onnx.checker.check_model(model)
    diff = None
    if verify:
        with torch.no_grad():
            want = module(example).numpy()
        got = run_onnx(model, example.numpy())
        diff = float(np.max(np.abs(got - want)))
    out = None
    if path is not None:
        out = os.fspath(path)
        onnx.save(model, out)
    return ExportResult(model, metadata, diff, out)


def run_onnx(model: Any, images: np.ndarray) -> np.ndarray:
    """logits of an exported model for images [B, C, H, W] float32, computed by onnxruntime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("running an exported model needs onnxruntime; install it with pip install "
                          "'convnn[onnx]'") from err
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)})[0]


__all__ = ["ExportKernels", "ExportResult", "EXPORT_PATH", "DEFAULT_OPSET", "check_opset", "export_zoo_module",
           "kvt_graph", "layer_norm_graph", "merge_heads_slots", "run_onnx"]
