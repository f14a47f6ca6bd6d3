#!/usr/bin/env python3
"""Reference logits and greedy tokens from Hugging Face transformers for a medcluster checkpoint.

Runs where torch, transformers and safetensors exist (the GPU test machine). The checkpoint
must come from medcluster's own generator (`medcluster make-model`), so both sides read the
same bytes. The AWQ tensors are dequantized exactly (w = (q - z) * s, per MODEL.md) into an
fp32 LlamaForCausalLM; nothing else is changed, so the reference is transformers' own Llama.

Usage: make_hf_reference.py MODEL_DIR OUT.json [--device cuda|cpu] [--steps 32] [--preset tiny --seed N]
"""
import argparse
import base64
import hashlib
import json
import os

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

# Nibble i of each int32 holds column 8c + AWQ_ORDER[i] (AutoAWQ GEMM packing).
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

PROMPTS = [
    "The patient presented with",
    "Question: What is the first-line treatment for type 2 diabetes?\nAnswer:",
    # A long prompt (several hundred tokens): exercises multi-block KV and long attention.
    " ".join(
        [
            "A 67-year-old man with a history of hypertension, hyperlipidemia and chronic kidney disease",
            "presented to the emergency department with two hours of crushing substernal chest pain radiating",
            "to the left arm, associated with diaphoresis and nausea. Electrocardiography showed ST-segment",
            "elevation in leads II, III and aVF. Troponin I was elevated at 4.2 ng/mL.",
        ]
        * 6
    )
    + " The most appropriate next step in management is",
]


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """int32 [R, C/8] -> uint8 [R, C] in column order."""
    rows, words = packed.shape
    out = np.empty((rows, words * 8), dtype=np.uint8)
    u = packed.view(np.uint32)
    for i, col in enumerate(AWQ_ORDER):
        out[:, col::8] = ((u >> (4 * i)) & 0xF).astype(np.uint8)
    return out


def dequantize(qweight, qzeros, scales, group):
    q = unpack_int4(qweight).astype(np.float64)
    z = unpack_int4(qzeros).astype(np.float64)
    s = scales.astype(np.float64)
    k = q.shape[0]
    g = np.arange(k) // group
    w = (q - z[g]) * s[g]  # [K, N]
    return torch.from_numpy(w.T.astype(np.float32).copy())  # nn.Linear layout [N, K]


def load_tensors(model_dir):
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        files = sorted(set(json.load(open(index_path))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        with safe_open(os.path.join(model_dir, f), framework="np") as st:
            for name in st.keys():
                tensors[name] = st.get_tensor(name)
    return tensors


def build_model(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    group = (cfg.get("quantization_config") or {}).get("group_size")
    qc_path = os.path.join(model_dir, "quant_config.json")
    if os.path.exists(qc_path):
        group = json.load(open(qc_path)).get("q_group_size", group)
    tensors = load_tensors(model_dir)
    vocab_rows = tensors["model.embed_tokens.weight"].shape[0]
    config = LlamaConfig(
        vocab_size=vocab_rows,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        head_dim=cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg.get("rope_theta", 10000.0),
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).to(torch.float32)
    state = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            base = name[: -len(".qweight")]
            state[base + ".weight"] = dequantize(
                t, tensors[base + ".qzeros"], tensors[base + ".scales"], group
            )
        elif name.endswith(".qzeros") or name.endswith(".scales"):
            continue
        else:
            state[name] = torch.from_numpy(t.astype(np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


def checkpoint_digests(model_dir):
    """sha256 of every weight file, so a test can prove it runs the very same checkpoint."""
    digests = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            h = hashlib.sha256()
            with open(os.path.join(model_dir, f), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            digests[f] = h.hexdigest()
    return digests


def b64_f32(x: torch.Tensor) -> str:
    return base64.b64encode(x.detach().cpu().numpy().astype("<f4").tobytes()).decode()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--preset", default="tiny", help="recorded: the make-model preset used")
    ap.add_argument("--seed", type=int, default=0, help="recorded: the make-model seed used")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    model = build_model(args.model_dir).to(args.device)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    cases = []
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids  # BOS prepended by the tokenizer's post-processor
        seq = torch.tensor([ids], device=args.device)
        out = model(seq, use_cache=True)
        prompt_logits = out.logits[0, -1].float()
        past = out.past_key_values
        logits = prompt_logits
        tokens, margins = [], []
        for _ in range(args.steps):
            top2 = torch.topk(logits, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            nxt = int(top2.indices[0])
            tokens.append(nxt)
            out = model(torch.tensor([[nxt]], device=args.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
        cases.append(
            {
                "prompt": prompt,
                "promptIds": ids,
                "promptLogitsF32Base64": b64_f32(prompt_logits),
                "greedyTokens": tokens,
                "top2Margins": margins,
            }
        )
        print(f"prompt of {len(ids)} tokens: greedy {tokens[:8]}... min margin {min(margins):.3f}")
    fixture = {
        "generatedBy": "test/reference/make_hf_reference.py",
        "model": {"preset": args.preset, "seed": args.seed},
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "device": args.device,
        "dtype": "float32",
        "checkpointSha256": checkpoint_digests(args.model_dir),
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f)


if __name__ == "__main__":
    main()
