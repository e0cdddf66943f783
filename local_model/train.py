"""Train the shipped ``hybridgate-tiny`` checkpoint (tokenizer + Jamba-style hybrid) from the prepared corpus.

Pipeline: read ``train.jsonl`` / ``eval.jsonl`` written by ``local_model/data/prepare.py`` -> train a
byte-level BPE tokenizer with chat special tokens (or reuse one) -> pack documents into fixed-length
windows, sampling sources by token share -> train `local_model.model.JambaForCausalLM` with AdamW,
linear warm-up + cosine decay, gradient clipping, a small MoE load-balancing loss, periodic eval ->
export an HF-layout checkpoint with `local_model.weights.save_checkpoint` plus ``tokenizer.json`` /
``tokenizer_config.json`` (with the chat template), loadable by `local_model.load` and by transformers'
``JambaForCausalLM.from_pretrained``.

Runs on CPU (fp32) or CUDA (bf16 autocast), both with the training scan of `local_model.scan_train`,
because the model's default chunked scan is slow to differentiate (memory-bound on CPU, launch-bound on GPU). Every ``--save-every`` steps it
writes a resumable state (model + optimizer + step + RNG) to ``--work-dir`` and exports the checkpoint,
so a killed run loses little; ``--resume`` continues from the state. ``--max-minutes`` stops early
(and saves) when a wall-clock budget is spent.

Examples::

    python -m local_model.train --smoke --out /tmp/smoke            # seconds, tiny config
    python -m local_model.train --device cpu --steps 1000 --out local_model/checkpoints/hybridgate-tiny
    python -m local_model.train --device cuda --steps 6000 --batch-size 64 --out /tmp/hybridgate-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import JambaConfig
from .model import DEFAULT_KERNELS, REFERENCE_KERNELS, JambaForCausalLM, MambaKernels
from .scan_train import TRAIN_KERNELS
from .weights import Tokenizer, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT / "local_model" / "data" / "corpus"
DEFAULT_OUT = REPO_ROOT / "local_model" / "checkpoints" / "hybridgate-tiny"

# ============================================================================ tokenizer

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END]  # ids 0..6, in this order

# One turn is "<|role|>\ncontent<|end|>\n"; the prompt for a reply is "<|assistant|>\n". Content may be
# a string or a list of OpenAI-style parts ({"type": "text", "text": ...}); other part types are skipped.
# OpenAI's "developer" role (its newer name for "system") is written as the system turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'system' if message['role'] == 'developer' else message['role'] %}"
    "{% if role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only system (or developer), user and assistant roles are supported') }}"
    "{% endif %}"
    "{{ '<|' + role + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> Any:
    """Byte-level BPE (GPT-2 style: every byte representable, no unknown token) + chat special tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    return tok


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast and local_model's `Tokenizer`."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, s in enumerate(SPECIAL_TOKENS)
        },
    }  # fmt: skip


def write_tokenizer(tok: Any, out: Path, model_max_length: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(model_max_length), indent=2) + "\n"
    )


# ============================================================================ model configs


def model_config(name: str, vocab_size: int, end_id: int) -> JambaConfig:
    """The architectures this script trains.

    ``hybridgate-tiny`` (shipped): 8 layers, attention at layers 3 and 7 (1 in 4), MoE with 4 experts
    (top-2) on every odd layer, d_state 16, tied embeddings: ~8.4M parameters, ~6M active per token. Sized
    so that a 2-core CPU trains it in about an hour and decodes well above 20 tokens/s.
    ``smoke``: every concept present at toy size, for tests.
    """
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=[2, end_id],
        mamba_d_conv=4,
        mamba_expand=2,
        num_experts=4,
        num_experts_per_tok=2,
        expert_layer_period=2,
        expert_layer_offset=1,
        attn_layer_period=4,
        attn_layer_offset=3,
        use_mamba_kernels=False,  # transformers: use its pure-PyTorch path, no mamba-ssm CUDA kernels needed
    )
    if name == "hybridgate-tiny":
        return JambaConfig(
            **common,
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=8,
            num_attention_heads=6,
            num_key_value_heads=2,
            mamba_d_state=16,
            max_position_embeddings=4096,
        )
    if name == "smoke":
        return JambaConfig(
            **common,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            mamba_d_state=4,
            max_position_embeddings=1024,
        )
    raise ValueError(f"unknown model config {name!r}")


# ============================================================================ data

# Share of training *tokens* per corpus source (renormalised over the sources present).
DEFAULT_MIX = {
    "alice": 0.25,
    "alice-chat": 0.12,
    "wordnet-examples": 0.20,
    "wordnet-definitions": 0.13,
    "wordnet-chat": 0.25,
    "smalltalk": 0.05,
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def doc_texts(doc: dict[str, Any]) -> Iterator[str]:
    if "text" in doc:
        yield doc["text"]
    else:
        for m in doc["messages"]:
            yield m["content"]


def encode_docs(docs: list[dict[str, Any]], tok: Tokenizer) -> dict[str, list[list[int]]]:
    """Token ids per source. Plain text: bos + text + eos; chat: the rendered template (which starts with
    bos and ends every turn with <|end|>) + eos."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert bos is not None and eos is not None
    plain = [d for d in docs if "text" in d]
    chats = [d for d in docs if "text" not in d]
    rendered = [str(tok.apply_chat_template(d["messages"], add_generation_prompt=False)) for d in chats]
    out: dict[str, list[list[int]]] = {}
    plain_enc = tok.backend.encode_batch([d["text"] for d in plain], add_special_tokens=False)
    for d, enc in zip(plain, plain_enc, strict=True):
        out.setdefault(d["source"], []).append([bos, *enc.ids, eos])
    for d, enc in zip(chats, tok.backend.encode_batch(rendered, add_special_tokens=False), strict=True):
        out.setdefault(d["source"], []).append([*enc.ids, eos])
    return out


class Packer:
    """Random packed windows: each row concatenates whole documents, drawn by source so that the
    sources' token shares follow ``mix``, and keeps the first ``seq_len + 1`` tokens."""

    def __init__(self, docs: dict[str, list[list[int]]], mix: dict[str, float], seed: int) -> None:
        self.docs = {s: d for s, d in docs.items() if d}
        weights = {s: mix.get(s, 0.0) for s in self.docs}
        if sum(weights.values()) <= 0:
            weights = {s: 1.0 for s in self.docs}
        # Per-draw probability ~ token share / mean doc length, so drawn tokens follow the share.
        mean_len = {s: sum(map(len, d)) / len(d) for s, d in self.docs.items()}
        raw = {s: w / mean_len[s] for s, w in weights.items() if w > 0}
        total = sum(raw.values())
        self.sources = list(raw)
        self.probs = [raw[s] / total for s in self.sources]
        self.rng = random.Random(seed)

    def row(self, length: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < length:
            source = self.rng.choices(self.sources, self.probs)[0]
            ids.extend(self.rng.choice(self.docs[source]))
        return ids[:length]

    def batch(self, batch_size: int, seq_len: int) -> torch.Tensor:
        return torch.tensor([self.row(seq_len + 1) for _ in range(batch_size)], dtype=torch.long)


# ============================================================================ training


@dataclass
class TrainArgs:
    """Hyper-parameters (see `parse_args` for the command-line names and defaults)."""

    corpus: Path
    out: Path
    work_dir: Path
    model: str
    device: str
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr_ratio: float
    warmup: int
    weight_decay: float
    grad_clip: float
    eval_every: int
    eval_batches: int
    save_every: int
    log_every: int
    vocab_size: int
    tokenizer: Path | None
    seed: int
    threads: int | None
    max_minutes: float | None
    save_dtype: str
    scan: str
    resume: bool
    fit_steps: bool


def lr_at(step: int, a: TrainArgs) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    progress = min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch-Transformer auxiliary loss, E * sum_e f_e * P_e, averaged over MoE layers (as transformers'
    Jamba computes it): keeps experts used evenly so none of them dies."""
    losses = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        n_experts = probs.shape[-1]
        chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, n_experts).float().sum(1) / top_k
        losses.append(n_experts * (chosen.mean(0) * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: not norms, biases, Mamba's A_log / D (as mamba_simple's _no_weight_decay)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied lm_head / embedding
            continue
        seen.add(id(p))
        if p.ndim < 2 or name.endswith(("A_log", ".D")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def kernels_for(scan: str, device: torch.device) -> MambaKernels:
    """``auto`` is the training scan everywhere: on a GPU the chunked scan's many small ops are
    launch-bound, so a training step with it is several times slower (figures in bench/RESULTS.md)."""
    if scan == "auto":
        scan = "train"
    return {"train": TRAIN_KERNELS, "chunked": DEFAULT_KERNELS, "ref": REFERENCE_KERNELS}[scan]


def compute_loss(
    model: JambaForCausalLM, batch: torch.Tensor, device: torch.device, aux_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, LM loss). bf16 autocast on CUDA; the cross-entropy is computed in fp32."""
    batch = batch.to(device, non_blocking=True)
    router_logits: list[torch.Tensor] = []
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(batch[:, :-1], router_logits=router_logits)
    lm = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    total = lm
    if router_logits and aux_coef > 0:
        total = lm + aux_coef * load_balancing_loss(router_logits, model.config.num_experts_per_tok)
    return total, lm


@torch.no_grad()
def evaluate(model: JambaForCausalLM, batches: list[torch.Tensor], device: torch.device) -> float:
    was_training = model.training
    model.eval()
    losses = [compute_loss(model, b, device, 0.0)[1].item() for b in batches]
    model.train(was_training)
    return sum(losses) / max(1, len(losses))


def export(model: JambaForCausalLM, a: TrainArgs, tok_dir: Path, summary: dict[str, Any]) -> None:
    """HF-layout checkpoint into ``a.out``: weights + config (local_model.weights.save_checkpoint), tokenizer files."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.save_dtype]
    a.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, a.out, dtype=dtype)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (a.out / name).write_bytes((tok_dir / name).read_bytes())
    (a.work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def prepare_tokenizer(a: TrainArgs, train_docs: list[dict[str, Any]], max_len: int) -> Tokenizer:
    """Reuse ``--tokenizer`` or the work dir's tokenizer (on resume); else train one on the train split."""
    tok_dir = a.work_dir / "tokenizer"
    src = a.tokenizer
    if src is None and (tok_dir / "tokenizer.json").exists():
        src = tok_dir
    if src is not None:
        if src.resolve() != tok_dir.resolve():
            tok_dir.mkdir(parents=True, exist_ok=True)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (tok_dir / name).write_bytes((src / name).read_bytes())
    else:
        backend = train_tokenizer((t for d in train_docs for t in doc_texts(d)), a.vocab_size)
        write_tokenizer(backend, tok_dir, max_len)
    tok = Tokenizer.from_dir(tok_dir)
    assert tok is not None
    return tok


def train(a: TrainArgs) -> dict[str, Any]:
    """Run training; returns the summary (also written to ``work_dir/summary.json``)."""
    t_start = time.time()
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = a.work_dir / "train_log.jsonl"

    def log(record: dict[str, Any]) -> None:
        record = {"time_s": round(time.time() - t_start, 1), **record}
        print(json.dumps(record), flush=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    train_docs = read_jsonl(a.corpus / "train.jsonl")
    eval_docs = read_jsonl(a.corpus / "eval.jsonl")
    probe = model_config(a.model, 8, 6)
    tok = prepare_tokenizer(a, train_docs, probe.max_position_embeddings)
    end_id = tok.token_to_id(END)
    assert end_id is not None
    config = model_config(a.model, tok.vocab_size, end_id)

    model = JambaForCausalLM(config, seed=a.seed).to(device)
    model.set_kernels(kernels_for(a.scan, device))
    model.train()
    optimizer = torch.optim.AdamW(
        param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
        fused=device.type == "cuda",
    )  # fmt: skip

    t0 = time.time()
    train_ids = encode_docs(train_docs, tok)
    eval_ids = encode_docs(eval_docs, tok)
    n_train_tokens = sum(len(d) for docs in train_ids.values() for d in docs)
    packer = Packer(train_ids, DEFAULT_MIX, a.seed)
    eval_packer = Packer(eval_ids, DEFAULT_MIX, a.seed + 1)
    eval_batches = [eval_packer.batch(a.batch_size, a.seq_len) for _ in range(a.eval_batches)]

    step = 0
    state_path = a.work_dir / "state.pt"
    if a.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        packer.rng.setstate(state["packer_rng"])
        torch.set_rng_state(state["torch_rng"])
        log({"event": "resumed", "step": step})

    n_params = sum(p.numel() for p in model.parameters())
    log({
        "event": "start", "model": a.model, "params": n_params, "config_params": config.num_parameters(),
        "vocab": tok.vocab_size, "train_tokens": n_train_tokens, "device": str(device),
        "threads": torch.get_num_threads(), "tokenize_s": round(time.time() - t0, 1),
    })  # fmt: skip

    history: list[dict[str, Any]] = []
    first_eval = evaluate(model, eval_batches, device) if step == 0 else None
    if first_eval is not None:
        log({"event": "eval", "step": 0, "eval_loss": round(first_eval, 4)})
    summary: dict[str, Any] = {}
    train_loss_ema: float | None = None
    first_train_loss: float | None = None
    tokens_seen = step * a.batch_size * a.seq_len
    t_loop, steps_this_run = time.time(), 0
    stop_reason = "steps"

    def save(final: bool) -> None:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "packer_rng": packer.rng.getstate(), "torch_rng": torch.get_rng_state()},
            state_path,
        )  # fmt: skip
        summary.update({
            "model": a.model, "params": n_params, "step": step, "steps": a.steps, "final": final,
            "tokens_seen": tokens_seen, "train_loss_ema": train_loss_ema, "first_train_loss": first_train_loss,
            "first_eval_loss": first_eval, "history": history, "wall_s": round(time.time() - t_start, 1),
            "device": str(device), "batch_size": a.batch_size, "seq_len": a.seq_len, "lr": a.lr,
            "stop_reason": stop_reason,
        })  # fmt: skip
        export(model, a, a.work_dir / "tokenizer", summary)

    while step < a.steps:
        lr = lr_at(step, a)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, lm = compute_loss(
            model, packer.batch(a.batch_size, a.seq_len), device, config.router_aux_loss_coef
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        step += 1
        steps_this_run += 1
        tokens_seen += a.batch_size * a.seq_len
        lm_val = lm.item()
        if first_train_loss is None:
            first_train_loss = lm_val
        train_loss_ema = lm_val if train_loss_ema is None else 0.95 * train_loss_ema + 0.05 * lm_val
        if a.fit_steps and a.max_minutes is not None and steps_this_run == 20:
            # Shrink the schedule so the cosine decay ends inside the wall-clock budget (5% margin for
            # evals and saves): a run cut off at a high learning rate is worse than a shorter full one.
            per_step = (time.time() - t_loop) / steps_this_run
            left = a.max_minutes * 60 * 0.95 - (time.time() - t_start)
            fitted = step + max(1, int(left / per_step))
            if fitted < a.steps:
                a.steps = fitted
                log({"event": "fit_steps", "steps": a.steps, "step_s": round(per_step, 4)})
        if step % a.log_every == 0 or step == a.steps:
            rate = steps_this_run * a.batch_size * a.seq_len / (time.time() - t_loop)
            log({"step": step, "loss": round(lm_val, 4), "loss_ema": round(train_loss_ema, 4),
                 "lr": round(lr, 6), "grad_norm": round(float(grad_norm), 3), "tok_s": round(rate)})  # fmt: skip
        if step % a.eval_every == 0 or step == a.steps:
            ev = evaluate(model, eval_batches, device)
            history.append(
                {"step": step, "train_loss_ema": round(train_loss_ema, 4), "eval_loss": round(ev, 4)}
            )
            log({"event": "eval", "step": step, "eval_loss": round(ev, 4)})
        out_of_time = a.max_minutes is not None and (time.time() - t_start) / 60 > a.max_minutes
        if out_of_time:
            stop_reason = "max_minutes"
        if step % a.save_every == 0 or step == a.steps or out_of_time:
            save(final=step == a.steps or out_of_time)
            log({"event": "saved", "step": step, "out": str(a.out)})
        if out_of_time:
            break
    if steps_this_run == 0:
        save(final=True)
    summary["final_eval_loss"] = history[-1]["eval_loss"] if history else first_eval
    (a.work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ============================================================================ samples and decode speed

REPORT_COMPLETIONS = ("Alice was beginning to", "Once upon a time", "The White Rabbit")
REPORT_CHATS = ("Hello!", "Who are you?", 'What does "harbor" mean?', "Tell me a story.")


def report(path: Path, max_new_tokens: int = 60, bench_tokens: int = 128) -> dict[str, Any]:
    """Greedy samples (plain completion and chat) and single-stream decode speed of a checkpoint.

    Decode speed is measured the way the brief asks for it: `LocalModel.greedy` (one prefill, then one
    token per step through the explicit caches) on a fixed prompt, ``bench_tokens`` new tokens with no
    early stop, best of three, in the current torch thread setting.
    """
    import local_model

    lm = local_model.load(path)
    tok = lm.tokenizer
    assert tok is not None
    samples: list[dict[str, str]] = []
    for prompt in REPORT_COMPLETIONS:
        ids = lm.greedy(tok.encode(prompt, add_special_tokens=False), max_new_tokens)
        samples.append({"kind": "completion", "prompt": prompt, "output": tok.decode(ids)})
    for question in REPORT_CHATS:
        msgs = [{"role": "user", "content": question}]
        prompt_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        assert isinstance(prompt_ids, list)
        ids = lm.greedy(prompt_ids, max_new_tokens)
        samples.append({"kind": "chat", "prompt": question, "output": tok.decode(ids)})
    prompt_ids = tok.encode("Alice was beginning to get very tired", add_special_tokens=False)
    lm.greedy(prompt_ids, 8, stop_ids=[])  # warm-up
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        n = len(lm.greedy(prompt_ids, bench_tokens, stop_ids=[]))
        best = max(best, n / (time.perf_counter() - t))
    return {"samples": samples, "decode_tok_s": round(best, 1), "threads": torch.get_num_threads()}


# ============================================================================ CLI


def parse_args(argv: list[str]) -> TrainArgs:
    p = argparse.ArgumentParser(prog="python -m local_model.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="dir with train.jsonl / eval.jsonl")
    p.add_argument("--out", type=Path, default=None, help="checkpoint dir (HF layout)")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="logs, tokenizer, resumable state (default: OUT-work)"
    )
    p.add_argument("--model", default=None, choices=["hybridgate-tiny", "smoke"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-batches", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument(
        "--tokenizer", type=Path, default=None, help="dir with tokenizer.json/_config.json to reuse"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this wall time")
    p.add_argument("--save-dtype", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--scan", default="auto", choices=["auto", "train", "chunked", "ref"])
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/state.pt if present")
    p.add_argument(
        "--fit-steps", action="store_true", help="with --max-minutes: shorten --steps to fit the budget"
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of a toy config (for tests)")
    ns = p.parse_args(argv)
    smoke = ns.smoke
    defaults = dict(
        model="smoke" if smoke else "hybridgate-tiny",
        steps=30 if smoke else 1000,
        batch_size=4 if smoke else 8,
        seq_len=64 if smoke else 256,
        warmup=5 if smoke else 60,
        eval_every=10 if smoke else 100,
        eval_batches=2 if smoke else 8,
        save_every=1000 if smoke else 100,
        log_every=5 if smoke else 10,
        vocab_size=320 if smoke else 4096,
        save_dtype="fp32" if smoke else "bf16",
    )
    for k, v in defaults.items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    if ns.out is None:
        if smoke:
            p.error("--smoke needs --out (do not overwrite the shipped checkpoint)")
        ns.out = DEFAULT_OUT
    if ns.work_dir is None:
        ns.work_dir = ns.out.with_name(ns.out.name + "-work")
    return TrainArgs(**{k: v for k, v in vars(ns).items() if k != "smoke"})


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        # python -m local_model.train --report CKPT_DIR [THREADS]: samples + decode speed as JSON.
        if len(argv) > 2:
            torch.set_num_threads(int(argv[2]))
        print(json.dumps(report(Path(argv[1])), indent=2))
        return 0
    args = parse_args(argv)
    summary = train(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
