"""DeepSeek-V4 configuration, reading the official config.json keys unchanged.

This file is bundled next to `modeling_deepseek_v4.py` in every exported folder, so it depends on
transformers only. Defaults are DeepSeek-V4-Flash. An inconsistent config fails at construction with a
message naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
"""The layer kinds (`DeepseekV4Config.layer_types`, named as in transformers): sliding window only,
compressed sparse attention with the lightning indexer (overlapping windows of 4), heavily compressed
attention (windows of 128)."""

COMPRESS_RATIOS = {SLIDING: 0, CSA: 4, HCA: 128}
"""Each layer kind's entry in the official `compress_ratios`: the tokens one compressed entry pools (0: none)."""

MTP, DSPARK = "mtp", "dspark"
"""The drafters a checkpoint can carry under `mtp.*` (see `DeepseekV4Config.drafter`)."""

SCORING_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")

EXPERTS_IMPLEMENTATIONS = ("loop", "grouped", "dense")
"""Forms of the routed experts (same math; see `MoE` in modeling_deepseek_v4.py): a per-expert gather loop
(eager default), grouped matmuls over expert-sorted slots (tracing), every expert on every token with zero
weight for the unpicked (static shapes)."""

FLASH_YARN = {
    "type": "yarn",
    "factor": 16,
    "beta_fast": 32,
    "beta_slow": 1,
    "original_max_position_embeddings": 65536,
}


def flash_compress_ratios(num_hidden_layers: int, num_nextn_predict_layers: int) -> list[int]:
    """V4-Flash's schedule: two sliding layers, then CSA/HCA alternating; MTP blocks are sliding."""
    layers = [SLIDING if i < 2 else (CSA if i % 2 == 0 else HCA) for i in range(num_hidden_layers)]
    return [COMPRESS_RATIOS[t] for t in layers + [SLIDING] * num_nextn_predict_layers]


def layer_type(ratio: int) -> str:
    """The layer kind of a `compress_ratios` entry."""
    return next(t for t, r in COMPRESS_RATIOS.items() if r == ratio)


class DeepseekV4Config(PretrainedConfig):
    r"""Configuration of a DeepSeek-V4 model (`model_type="deepseek_v4"`).

    Field names are those of the official release's config.json. `compress_ratios` has one entry per
    decoder layer followed by one per `mtp.N` block (MTP block, or DSpark stage when the `dspark_*` keys of
    the `-DSpark`/`-0731` releases are present: see `drafter`); `rope_scaling` (YaRN) applies to compressed layers only.
    `layer_types` (transformers' key) names each decoder layer's kind (`COMPRESS_RATIOS`): derived from
    `compress_ratios`, or checked against them when given; not saved, config.json keeps `compress_ratios`.
    `experts_implementation` (not an official key, not saved) picks the routed experts' form, one of
    `EXPERTS_IMPLEMENTATIONS`: it changes how the experts are computed, not what.
    """

    model_type = "deepseek_v4"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 129280,
        hidden_size: int = 4096,
        num_hidden_layers: int = 43,
        num_attention_heads: int = 64,
        num_key_value_heads: int = 1,
        head_dim: int = 512,
        qk_rope_head_dim: int = 64,
        q_lora_rank: int = 1024,
        o_groups: int = 8,
        o_lora_rank: int = 1024,
        sliding_window: int = 128,
        compress_ratios: list[int] | None = None,
        layer_types: list[str] | None = None,
        rope_theta: float = 10000.0,
        compress_rope_theta: float = 160000.0,
        rope_scaling: dict[str, Any] | None = None,
        max_position_embeddings: int = 1048576,
        rms_norm_eps: float = 1e-6,
        index_n_heads: int = 64,
        index_head_dim: int = 128,
        index_topk: int = 512,
        hc_mult: int = 4,
        hc_sinkhorn_iters: int = 20,
        hc_eps: float = 1e-6,
        n_routed_experts: int = 256,
        num_experts_per_tok: int = 6,
        moe_intermediate_size: int = 2048,
        n_shared_experts: int = 1,
        num_hash_layers: int = 3,
        scoring_func: str = "sqrtsoftplus",
        routed_scaling_factor: float = 1.5,
        swiglu_limit: float = 10.0,
        topk_method: str = "noaux_tc",
        num_nextn_predict_layers: int = 1,
        dspark_block_size: int | None = None,
        dspark_noise_token_id: int | None = None,
        dspark_target_layer_ids: list[int] | None = None,
        dspark_markov_rank: int | None = None,
        hidden_act: str = "silu",
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 0,
        eos_token_id: int | list[int] | None = 1,
        use_cache: bool = True,
        experts_implementation: str = "loop",
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.q_lora_rank = q_lora_rank
        self.o_groups = o_groups
        self.o_lora_rank = o_lora_rank
        self.sliding_window = sliding_window
        if compress_ratios is None:
            compress_ratios = flash_compress_ratios(num_hidden_layers, num_nextn_predict_layers)
        self.compress_ratios = list(compress_ratios)
        self.rope_theta = rope_theta
        self.compress_rope_theta = compress_rope_theta
        # `rope_scaling` is a property of PretrainedConfig in transformers 5 (an alias of
        # `rope_parameters`), so the YaRN dict is held under its own name and written back by to_dict.
        self.yarn_scaling = dict(FLASH_YARN if rope_scaling is None else rope_scaling)
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.index_n_heads = index_n_heads
        self.index_head_dim = index_head_dim
        self.index_topk = index_topk
        self.hc_mult = hc_mult
        self.hc_sinkhorn_iters = hc_sinkhorn_iters
        self.hc_eps = hc_eps
        self.n_routed_experts = n_routed_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.n_shared_experts = n_shared_experts
        self.num_hash_layers = num_hash_layers
        self.scoring_func = scoring_func
        self.routed_scaling_factor = routed_scaling_factor
        self.swiglu_limit = swiglu_limit
        self.topk_method = topk_method
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.dspark_block_size = dspark_block_size
        self.dspark_noise_token_id = dspark_noise_token_id
        self.dspark_target_layer_ids = None if dspark_target_layer_ids is None else list(dspark_target_layer_ids)
        self.dspark_markov_rank = dspark_markov_rank
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.experts_implementation = experts_implementation
        kwargs.pop("rope_parameters", None)  # a transformers-5 alias of rope_scaling, never authoritative
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        # set after the base class's own checks, whose `layer_types` names are not V4's
        self.layer_types = None if layer_types is None else list(layer_types)
        self.validate()

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["rope_scaling"] = out.pop("yarn_scaling")
        out.pop("rope_parameters", None)
        out.pop("experts_implementation", None)  # how, not what (like attn_implementation): not saved
        out.pop("layer_types", None)  # compress_ratios says it
        for key in [k for k in out if k.startswith("dspark_") and out[k] is None]:
            del out[key]  # checkpoints without DSpark have no dspark_* keys
        return out

    @property
    def layer_ratios(self) -> list[int]:
        """Compression ratio of each decoder layer (MTP entries excluded)."""
        return self.compress_ratios[: self.num_hidden_layers]

    @property
    def drafter(self) -> str | None:
        """The drafter the checkpoint carries under `mtp.*`: "dspark" (the `-DSpark`/`-0731` releases' block
        drafter, announced by the `dspark_*` keys), "mtp" (the base release's MTP blocks) or None."""
        if self.dspark_block_size is not None:
            return DSPARK
        return MTP if self.num_nextn_predict_layers else None

    @property
    def drafter_blocks(self) -> int:
        """Number of `mtp.N` blocks. DSpark checkpoints still say `num_nextn_predict_layers: 1`; their stage
        count is the number of `compress_ratios` entries past the decoder layers (46 - 43 = 3 for V4-Flash)."""
        if self.drafter == DSPARK:
            return len(self.compress_ratios) - self.num_hidden_layers
        return self.num_nextn_predict_layers

    @property
    def mtp_ratios(self) -> list[int]:
        """Compression ratio of each `mtp.N` block (MTP block or DSpark stage)."""
        n = self.num_hidden_layers
        return self.compress_ratios[n : n + self.drafter_blocks]

    @property
    def mtp_layer_types(self) -> list[str]:
        """The kind of each `mtp.N` block, from its `compress_ratios` entry."""
        return [layer_type(r) for r in self.mtp_ratios]

    def without_drafter(self) -> DeepseekV4Config:
        """This config with no drafter: the target model alone (`mtp.*` tensors are not part of it)."""
        data = self.to_dict()
        data.update(num_nextn_predict_layers=0, compress_ratios=self.layer_ratios, dspark_block_size=None,
                    dspark_noise_token_id=None, dspark_target_layer_ids=None, dspark_markov_rank=None)
        return type(self)(**data)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""

        def fail(field: str, why: str) -> None:
            raise ValueError(f"DeepseekV4Config: invalid `{field}`: {why}")

        positive = (
            "vocab_size hidden_size num_hidden_layers num_attention_heads head_dim q_lora_rank o_groups "
            "o_lora_rank sliding_window index_n_heads index_head_dim index_topk hc_mult hc_sinkhorn_iters "
            "n_routed_experts num_experts_per_tok moe_intermediate_size"
        ).split()
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.num_nextn_predict_layers < 0 or self.num_hash_layers < 0:
            fail("num_nextn_predict_layers" if self.num_nextn_predict_layers < 0 else "num_hash_layers",
                 "must be >= 0")
        if self.num_key_value_heads != 1:
            fail("num_key_value_heads", f"V4 has one shared K=V head, got {self.num_key_value_heads}")
        rope = self.qk_rope_head_dim
        if rope % 2 or rope < 2 or rope > self.head_dim:
            fail("qk_rope_head_dim", f"must be even and in [2, head_dim={self.head_dim}], got {rope}")
        if rope > self.index_head_dim:
            fail("index_head_dim", f"must be >= qk_rope_head_dim={rope}, got {self.index_head_dim}")
        if (self.num_attention_heads * self.head_dim) % self.o_groups or self.num_attention_heads % self.o_groups:
            fail("o_groups", f"must divide num_attention_heads={self.num_attention_heads}, got {self.o_groups}")
        if self.num_experts_per_tok > self.n_routed_experts:
            fail("num_experts_per_tok", f"{self.num_experts_per_tok} > n_routed_experts={self.n_routed_experts}")
        if self.n_shared_experts != 1:
            fail("n_shared_experts", f"V4 has exactly one shared expert, got {self.n_shared_experts}")
        if self.num_hash_layers > self.num_hidden_layers:
            fail("num_hash_layers", f"{self.num_hash_layers} > num_hidden_layers={self.num_hidden_layers}")
        if self.scoring_func not in SCORING_FUNCS:
            fail("scoring_func", f"must be one of {SCORING_FUNCS}, got {self.scoring_func!r}")
        if self.experts_implementation not in EXPERTS_IMPLEMENTATIONS:
            fail("experts_implementation",
                 f"must be one of {EXPERTS_IMPLEMENTATIONS}, got {self.experts_implementation!r}")
        needed = self.num_hidden_layers + self.num_nextn_predict_layers
        if len(self.compress_ratios) < needed:
            fail("compress_ratios", f"has {len(self.compress_ratios)} entries, needs num_hidden_layers + "
                 f"num_nextn_predict_layers = {needed}")
        self.validate_dspark(fail)
        bad = sorted({r for r in self.compress_ratios[:needed] if r not in COMPRESS_RATIOS.values()})
        if bad:
            fail("compress_ratios", f"unknown ratio(s) {bad}; V4 uses 0 (sliding), 4 (CSA), 128 (HCA)")
        derived = [layer_type(r) for r in self.layer_ratios]
        if self.layer_types is None:
            self.layer_types = derived
        if len(self.layer_types) != self.num_hidden_layers:
            fail("layer_types", f"has {len(self.layer_types)} entries, needs num_hidden_layers = {self.num_hidden_layers}")
        for i, (given, kind) in enumerate(zip(self.layer_types, derived)):
            if given != kind:
                fail("layer_types", f"layer {i} is {given!r}, but compress_ratios[{i}] = {self.compress_ratios[i]} "
                     f"makes it {kind!r}")
        yarn = self.yarn_scaling
        if yarn:
            kind = yarn.get("type", yarn.get("rope_type"))
            if kind != "yarn":
                fail("rope_scaling", f"only YaRN scaling is defined for V4, got type {kind!r}")
            for key in ("factor", "original_max_position_embeddings"):
                if not isinstance(yarn.get(key), (int, float)) or yarn[key] <= 0:
                    fail("rope_scaling", f"`{key}` must be a positive number, got {yarn.get(key)!r}")
        if not (math.isfinite(self.rms_norm_eps) and self.rms_norm_eps > 0):
            fail("rms_norm_eps", f"must be positive, got {self.rms_norm_eps}")

    def validate_dspark(self, fail) -> None:
        """The `dspark_*` keys: all or none; stages (compress_ratios past the layers) sliding; target layers
        distinct decoder layers; the noise token inside the vocabulary."""
        keys = ("dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids", "dspark_markov_rank")
        given = [k for k in keys if getattr(self, k) is not None]
        if not given:
            return
        if len(given) != len(keys):
            fail(next(k for k in keys if k not in given), f"a DSpark config needs all of {', '.join(keys)}")
        for k in ("dspark_block_size", "dspark_markov_rank"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                fail(k, f"must be a positive integer, got {getattr(self, k)!r}")
        if not 0 <= self.dspark_noise_token_id < self.vocab_size:
            fail("dspark_noise_token_id", f"{self.dspark_noise_token_id} is outside the vocabulary "
                 f"(vocab_size={self.vocab_size})")
        ids = self.dspark_target_layer_ids
        if not ids or len(set(ids)) != len(ids) or not all(0 <= i < self.num_hidden_layers for i in ids):
            fail("dspark_target_layer_ids", f"must be distinct decoder layer indices in [0, "
                 f"{self.num_hidden_layers}), got {ids}")
        stages = self.compress_ratios[self.num_hidden_layers :]
        if not stages:
            fail("compress_ratios", f"a DSpark config needs one entry per stage past the {self.num_hidden_layers} "
                 f"decoder layers, got {len(self.compress_ratios)} entries")
        if any(stages):
            fail("compress_ratios", f"DSpark stages are sliding-window blocks (ratio 0), got {stages}")


__all__ = ["DeepseekV4Config", "flash_compress_ratios", "layer_type", "SLIDING", "CSA", "HCA", "COMPRESS_RATIOS",
           "EXPERTS_IMPLEMENTATIONS", "MTP", "DSPARK"]
