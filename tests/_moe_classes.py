"""Every experts class of the installed transformers dispatched by its experts interface,
built from its family's configuration shrunk to hidden 32, intermediate 16 and 4 experts."""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import torch
import transformers

HIDDEN, INNER, EXPERTS = 32, 16, 4


def interface_classes() -> list[tuple[str, str]]:
    """(module, class name) of each class decorated with ``use_experts_implementation``."""
    root = pathlib.Path(transformers.__file__).parent / "models"
    found = []
    for path in sorted(root.glob("*/modeling_*.py")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^@use_experts_implementation.*\nclass (\w+)", text, re.M):
            found.append((f"transformers.models.{path.parent.name}.{path.stem}", match.group(1)))
    return found


def _shrink(config):
    for key, value in list(vars(config).items()):
        if isinstance(value, transformers.PretrainedConfig):
            _shrink(value)
            continue
        if isinstance(value, list) and "intermediate" in key:
            setattr(config, key, [INNER] * len(value))
        if isinstance(value, bool) or not isinstance(value, (int, type(None))):
            continue
        if key in ("d_model", "hidden_dim", "n_embd", "dim") or key.endswith("hidden_size"):
            setattr(config, key, HIDDEN)
        elif "intermediate" in key or "ffn" in key or (key.endswith("_dim") and "head" not in key):
            setattr(config, key, INNER)
        elif "expert" in key and not any(w in key for w in ("per_tok", "top", "shared", "layer")):
            setattr(config, key, EXPERTS)


def build(module_name: str, class_name: str):
    """The experts module, from the first configuration class of its family that builds it."""
    cls = getattr(importlib.import_module(module_name), class_name)
    family = module_name.split(".")[2]
    configs = importlib.import_module(f"transformers.models.{family}.configuration_{family}")
    candidates = sorted((c for c in vars(configs).values() if inspect.isclass(c)
                         and issubclass(c, transformers.PretrainedConfig)
                         and c.__module__ == configs.__name__),
                        key=lambda c: ("Text" not in c.__name__, c.__name__))
    errors = []
    for config_class in candidates:
        config = config_class()
        _shrink(config)
        config = getattr(config, "text_config", None) or config
        for extra in ((), (0,), (INNER,)):  # some take a layer index or an intermediate size
            try:
                module = cls(config, *extra)
            except Exception as error:  # noqa: BLE001 - the next candidate may build it
                errors.append(f"{config_class.__name__}{extra}: {error}")
                continue
            if all(p.numel() for p in module.parameters()):
                return module, config
    raise RuntimeError(f"{class_name} does not build: {errors}")


class Logits(torch.nn.Module):
    """A causal LM without cache: input ids -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, use_cache=False).logits


# -- whole decoders at a tiny size, from their default configuration -------------------------
TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
            max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
            n_shared_experts=1, shared_expert_intermediate_size=64, first_k_dense_replace=1,
            # latent attention (DeepSeek-V2/V3 and kin), partial rotary, encoder-decoder heads
            qk_rope_head_dim=8, qk_nope_head_dim=8, qk_head_dim=16, v_head_dim=16,
            kv_lora_rank=32, q_lora_rank=32, rotary_dim=8, encoder_attention_heads=4,
            decoder_attention_heads=4,
            # group-limited routing: the 4 experts in one group (defaults assume 256 experts)
            n_group=1, topk_group=1)


_MAMBA2_FIELDS = [("num_heads", "head_dim", "expand", "n_groups"),
                  ("mamba_n_heads", "mamba_d_head", "mamba_expand", "mamba_n_groups"),
                  ("n_mamba_heads", "mamba_headdim", "mamba_expand", "mamba_ngroups"),
                  ("mamba_num_heads", "mamba_head_dim", "expand", "n_groups")]


def _tiny(config):
    for key, value in TINY.items():
        if hasattr(config, key) and not isinstance(getattr(config, key), (list, dict)):
            try:
                setattr(config, key, value)
            except (AttributeError, NotImplementedError):   # derived from other fields
                pass
    if getattr(config, "qk_rope_head_dim", None) and hasattr(config, "head_dim"):
        # latent attention: RoPE's width (head_dim x the partial rotary factor, if any)
        factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor")
        config.head_dim = int(config.qk_rope_head_dim / (factor or 1))
    if getattr(config, "kv_lora_rank", None) and hasattr(config, "num_key_value_heads"):
        # latent attention expands its keys and values to every head (as released configs
        # say: key-value heads = heads)
        config.num_key_value_heads = config.num_attention_heads
    for heads, head_dim, expand, groups in _MAMBA2_FIELDS:   # heads must cover expand x hidden
        if all(hasattr(config, k) for k in (heads, head_dim, expand, groups)):
            setattr(config, head_dim, 16)
            setattr(config, heads, getattr(config, expand) * config.hidden_size // 16)
            setattr(config, groups, 1)
            if getattr(config, "mamba_d_ssm", None):
                config.mamba_d_ssm = getattr(config, expand) * config.hidden_size
    for key in ("layer_types", "mlp_layer_types"):
        if isinstance(getattr(config, key, None), list):
            try:
                setattr(config, key, getattr(config, key)[:TINY["num_hidden_layers"]])
            except AttributeError:   # derived from other fields (a property with no setter)
                pass
    return config


def tiny_causal_lm(family: str):
    """The family's causal LM from its default configuration with TINY's sizes (2 layers,
    hidden 64, 4 experts, top-2, vocabulary 256); matrices its initialization leaves at zero
    (routers) drawn at std 0.02, so that routing has no ties."""
    module = importlib.import_module(f"transformers.models.{family}")
    names = sorted((n for n in dir(module) if n.endswith("ForCausalLM")), key=len)
    cls = getattr(module, names[0])
    config = _tiny(cls.config_class())
    if getattr(config, "text_config", None) is not None:
        _tiny(config.text_config)
    model = cls(config).eval()
    for p in model.parameters():
        if p.dim() >= 2 and not p.any():
            torch.nn.init.normal_(p, std=0.02)
    return model
