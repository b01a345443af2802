"""Toy presets: official config.json fields for `deepseek-v4-ov toy --preset NAME`.

`seed`  the published 1.34M-parameter toy's geometry (hidden 128, 4 layers [0,0,4,128], 4 heads of 32,
        q_lora 64, 8 experts top-2 + 1 shared, hc_mult 4, 4 Sinkhorn iterations, vocab 512, no hash layers,
        no MTP). Unpublished fields chosen here: moe_intermediate_size 64, o_groups 2, o_lora_rank 64,
        qk_rope_head_dim 16, 8 indexer heads of 16, index_topk 16, window 64 -> 1,348,829 parameters (+0.7%).
`full`  every feature on and small: 6 layers [0,0,4,128,4,128] + one MTP block, 3 hash-routed layers, YaRN,
        window 16, index_topk 8 (the indexer really selects past 32 tokens), 16 indexer heads so exact
        ReLU score ties are rare.
`mid`   V4-Flash's real per-layer shapes (hidden 4096, 64 heads of 512, q_lora 1024, 8 output groups of
        1024, indexer 64x128, experts 2048 wide, real vocabulary) with 4 layers and 16 experts; for
        benchmarks, not for the default tests.
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "num_key_value_heads": 1,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 16,
        "beta_fast": 32,
        "beta_slow": 1,
        "original_max_position_embeddings": 65536,
    },
    "rms_norm_eps": 1e-6,
    "hc_eps": 1e-6,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "swiglu_limit": 10.0,
    "topk_method": "noaux_tc",
    "hidden_act": "silu",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        **_COMMON,
        "vocab_size": 512,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "head_dim": 32,
        "qk_rope_head_dim": 16,
        "q_lora_rank": 64,
        "o_groups": 2,
        "o_lora_rank": 64,
        "sliding_window": 64,
        "compress_ratios": [0, 0, 4, 128],
        "max_position_embeddings": 4096,
        "index_n_heads": 8,
        "index_head_dim": 16,
        "index_topk": 16,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 4,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "num_hash_layers": 0,
        "num_nextn_predict_layers": 0,
    },
    "full": {
        **_COMMON,
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "head_dim": 32,
        "qk_rope_head_dim": 16,
        "q_lora_rank": 32,
        "o_groups": 2,
        "o_lora_rank": 32,
        "sliding_window": 16,
        "compress_ratios": [0, 0, 4, 128, 4, 128, 0],
        "max_position_embeddings": 4096,
        "index_n_heads": 16,
        "index_head_dim": 32,
        "index_topk": 8,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "num_hash_layers": 3,
        "num_nextn_predict_layers": 1,
    },
    "mid": {
        **_COMMON,
        "vocab_size": 129280,
        "hidden_size": 4096,
        "num_hidden_layers": 4,
        "num_attention_heads": 64,
        "head_dim": 512,
        "qk_rope_head_dim": 64,
        "q_lora_rank": 1024,
        "o_groups": 8,
        "o_lora_rank": 1024,
        "sliding_window": 128,
        "compress_ratios": [0, 4, 128, 4],
        "max_position_embeddings": 1048576,
        "index_n_heads": 64,
        "index_head_dim": 128,
        "index_topk": 512,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "n_routed_experts": 16,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 2048,
        "num_hash_layers": 1,
        "num_nextn_predict_layers": 0,
    },
}

# Trained toys (`training/train_toys.py`): the `seed` and `full` geometries, trained on the Python standard library's
# sources; their release-layout weights and tokenizer ship in `deepseek_v4_ov/toys/data/` (written by `deepseek_v4_ov.toys.trained`).
PRESETS["trained"] = dict(PRESETS["seed"])
PRESETS["trained-full"] = dict(PRESETS["full"])
TRAINED_PRESETS = ("trained", "trained-full")

