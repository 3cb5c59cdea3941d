"""Policy, reference and reward models: from a hub id, a local directory, or a tiny random Llama (offline)."""

from __future__ import annotations

import contextlib
import copy
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from common.config import ConfigError, LoraConfig, TinyModelConfig
from common.errors import ENVIRONMENT_ERRNOS, ModelFileError, ModelPathError, brief
from common.gguf import resolve_model_path
from common.numerics import check_finite_weights, non_finite_names

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_TOKENIZER = ASSETS / "smollm2-tokenizer"
TINY = "tiny"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.gguf", "*.pt")


def named(key: str, path: str) -> str:
    """How a message names a model: `model.policy=PATH` for a config key, `the trained policy PATH` otherwise."""
    return f"{key}={path}" if " " not in key else f"{key} {path}"


@contextlib.contextmanager
def loading(name_or_path: str, key: str = "model"):
    """transformers' OSError for a model it cannot get (an unknown hub id, no network, a gated repo, a file
    missing from a checkpoint) as one line naming the model; a truncated safetensors file or a pickle that holds
    more than tensors as one line naming the file. Local paths are checked before (check_model_path); the
    machine's own errors (disk, permissions) keep their type for launch.py's disk message."""
    try:
        yield
    except SafetensorError as e:
        raise ModelFileError(f"{named(key, name_or_path)}: cannot read {weight_files(name_or_path, '*.safetensors')} "
                             f"({brief(e)}): the file is truncated or corrupt; save or copy the model again, or "
                             f"point {key} at another model") from e
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused a pickle of arbitrary objects
        raise ModelFileError(f"{named(key, name_or_path)}: {weight_files(name_or_path, '*.bin')} is a pickle of "
                             f"Python objects, not only tensors, and is not loaded (unpickling it could run code); "
                             f"if you trust it, convert it to safetensors (load it, then save_pretrained with "
                             f"safe_serialization=True)") from e
    except OSError as e:
        if e.errno in ENVIRONMENT_ERRNOS:
            raise
        raise ModelPathError(f"cannot load the model or tokenizer {name_or_path}: {brief(e)}; check the hub id and "
                             f"the network (offline, only cached models load), or point the key that names it "
                             f"(model.policy, model.tokenizer, reward.init, reward.path) at a local "
                             f"directory") from e


def looks_local(name_or_path: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id ('org/name')."""
    return (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
            or Path(name_or_path).suffix in (".gguf", ".safetensors", ".bin"))


def check_model_path(name_or_path: str, key: str, needs: tuple[str, ...] = ("config", "weights")) -> None:
    """Fail in one line, before any loader runs, when a local model path is missing or incomplete.

    A hub id ('org/name') is left to the hub. `needs` lists what the directory must hold: "config"
    (config.json), "weights" (safetensors/bin/gguf shards or a peft adapter), "tokenizer" (tokenizer files).
    A single file (a .gguf) is left to its loader.
    """
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if looks_local(name_or_path):
            raise ModelPathError(f"not found: {name_or_path} ({key}); check the path, or run the stage that "
                                 f"writes it")
        return
    if not path.is_dir():
        return
    missing = []
    if "config" in needs and not (path / CONFIG_FILE).is_file() and not (path / "adapter_config.json").is_file():
        missing.append(CONFIG_FILE)
    if "weights" in needs and not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if "tokenizer" in needs and not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or tokenizer_config.json)")
    if missing:
        raise ModelPathError(f"model directory {name_or_path} ({key}) is incomplete: no {', no '.join(missing)}; "
                             f"save a full model there (save_pretrained) or point {key} elsewhere")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        # The real configs say `device: cuda` so that a missing GPU stops the run instead of training on the CPU.
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
        raise ConfigError(f"device: cuda, but torch {torch.__version__} ({build}) sees no GPU: check nvidia-smi "
                          f"and reinstall with scripts/install.py (it picks a torch for your driver), or run "
                          f"on the CPU with device=cpu")
    return torch.device(name)


def load_tokenizer(name_or_path: str, override: str = "") -> PreTrainedTokenizerBase:
    """The tokenizer of the model at `name_or_path`, or `override` (model.tokenizer) when set; the tiny model
    uses the bundled SmolLM2 tokenizer, a GGUF file its own."""
    source = override or name_or_path
    source = str(BUNDLED_TOKENIZER) if source == TINY else resolve_model_path(source)
    check_model_path(source, "model.tokenizer", ("tokenizer",))
    with loading(source):
        tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ConfigError(f"model.tokenizer: the tokenizer {source} has no chat template; set model.tokenizer to "
                          f"one that has (the SFT model's, e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")
    return tok


def tiny_llama_config(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers, num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads, max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def build_tiny_policy(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama with the tokenizer's vocabulary (deterministic for a seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_llama_config(tiny, tokenizer))


def weight_files(name_or_path: str, pattern: str) -> str:
    """The weight files of a local model directory that match `pattern`, for a message (else the path itself)."""
    path = Path(name_or_path)
    found = sorted(path.glob(pattern)) if path.is_dir() else []
    return ", ".join(str(f) for f in found) or name_or_path


def check_architecture(name_or_path: str, key: str) -> None:
    """Refuse, before loading weights, a model this code cannot run: every model here is a decoder-only causal LM
    (the policy generates with it; the reward model reads its last token's hidden state), so an encoder-decoder
    (T5, BART) or an encoder (BERT-style) would fail deep inside a stage. An adapter-only directory (peft) has no
    config.json of its own and is left to its loader."""
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / CONFIG_FILE).is_file():
        return
    config = AutoConfig.from_pretrained(name_or_path)  # trust_remote_code stays False: no model code is run
    if not config.is_encoder_decoder and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return
    archs = ", ".join(config.architectures or ()) or type(config).__name__
    kind = "an encoder-decoder" if config.is_encoder_decoder else "not a causal LM"
    raise ModelFileError(f"{named(key, name_or_path)} is a {config.model_type} model ({archs}), {kind}; supported: "
                         f"decoder-only causal LMs (what AutoModelForCausalLM loads: Llama, Qwen2, Mistral, GPT-2, "
                         f"SmolLM2, ...); point {key} at one")


def check_loaded(model: PreTrainedModel, name_or_path: str, key: str,
                 tokenizer: PreTrainedTokenizerBase | None) -> None:
    """What a loaded model must satisfy before any stage uses it: every weight finite (a NaN in the file would
    otherwise surface as a skipped update blamed on the learning rate) and, given the tokenizer, an embedding row
    for each of its tokens (else an id past the last row is an IndexError in the middle of generation)."""
    bad = non_finite_names(model.named_parameters())
    if bad:
        raise ModelFileError(f"{named(key, name_or_path)} holds non-finite weights ({len(bad)} tensors, e.g. "
                             f"{bad[0]}); the model file is corrupt: save or copy it again, or point {key} at "
                             f"another model")
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and rows < len(tokenizer):
        raise ModelFileError(f"{named(key, name_or_path)} has {rows} embedding rows but the tokenizer "
                             f"{tokenizer.name_or_path} has {len(tokenizer)} tokens; use the tokenizer the model was "
                             f"trained with (model.tokenizer, '' = the model's own) or a model with its vocabulary")


def load_causal_lm(name_or_path: str, device: torch.device, dtype: torch.dtype,
                   tokenizer: PreTrainedTokenizerBase | None = None, key: str = "model.policy") -> PreTrainedModel:
    """A causal LM, checked (check_architecture, check_loaded); `key` is the config key (or words) that named it."""
    with loading(name_or_path, key):
        check_architecture(name_or_path, key)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    check_loaded(model, name_or_path, key, tokenizer)
    return model.to(device)


def load_reward_model(name_or_path: str, num_labels: int, tokenizer: PreTrainedTokenizerBase,
                      device: torch.device, dtype: torch.dtype = torch.float32,
                      key: str = "reward.path") -> PreTrainedModel:
    """A sequence-classification model; from a causal LM checkpoint the head is newly initialised."""
    with loading(name_or_path, key):
        check_architecture(name_or_path, key)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, dtype=dtype)
    check_loaded(model, name_or_path, key, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The reference model: a copy that never trains (eval mode, no gradients)."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def apply_lora(model: PreTrainedModel, lora: LoraConfig, task_type: str) -> PreTrainedModel:
    """Wrap `model` with peft LoRA adapters when enabled (task_type: CAUSAL_LM or SEQ_CLS)."""
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type=task_type)
    return get_peft_model(model, peft_cfg)


def unwrap(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the model computes with, under the base model's names: what generators and vLLM load.

    With LoRA each adapted weight is the base weight plus its active adapters' delta as peft computes it
    (`get_delta_weight`), in a new tensor, so the values are bit for bit what a deep copy's `merge_and_unload()`
    gives; LoRA's own tensors are left out. The model is never written: peft's in-place
    `merge_adapter()` then `unmerge_adapter()` is not the identity in floating point and would move the frozen base
    weights (the reference) by rounding at every sync (measured: bench/bench_sync.py). The only new memory is one
    copy of the adapted weights; every other tensor is the model's own, detached, not copied (frozen under LoRA).
    Consumers copy what they receive (vLLM's reload, load_state_dict, ray.put) before the next learner step.
    """
    if not hasattr(model, "merge_and_unload"):  # no peft wrapper
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer
    base, merged = unwrap(model), {}
    with torch.no_grad():
        for layer in base.modules():
            if isinstance(layer, LoraLayer) and not layer.merged and not layer.disable_adapters:
                weight = merged_weight(layer)
                if weight is not None:
                    merged[storage_key(layer.get_base_layer().weight)] = weight
    # by storage, so that a weight tied to an adapted one (lm_head to embed_tokens) gets the merged values too
    return {name.replace(".base_layer.", "."): merged.get(storage_key(v), v).detach()
            for name, v in base.state_dict().items() if ".lora_" not in name}


def storage_key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), tuple(t.shape), t.stride()


def merged_weight(layer: torch.nn.Module) -> torch.Tensor | None:
    """A LoRA layer's base weight plus the delta of each of its active adapters, in a new tensor; None when no
    adapter is active. Bit for bit peft's merge (LoraLayer.merge) of plain LoRA, not assigned to the layer: the
    delta peft computes (`get_delta_weight`, a new tensor) takes the base weight in place (W + d = d + W exactly)."""
    weight, merged = layer.get_base_layer().weight.detach(), None
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A and adapter not in layer.lora_embedding_A:
            continue
        if adapter in getattr(layer, "lora_variant", {}) or layer.lora_bias.get(adapter):
            raise ValueError(f"{type(layer).__name__}: adapter {adapter!r} is a DoRA or lora_bias adapter, whose "
                             f"merge this sync does not compute (model.lora builds plain LoRA adapters)")
        delta = layer.get_delta_weight(adapter).to(weight.dtype)
        merged = delta.add_(weight) if merged is None else merged.add_(delta)
    return merged


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save full (LoRA-merged) weights with the tokenizer, loadable by from_pretrained."""
    path = Path(path)
    to_save = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
    check_finite_weights(to_save.state_dict().items(), str(path))  # before anything is written
    path.mkdir(parents=True, exist_ok=True)
    to_save.save_pretrained(path)
    tokenizer.save_pretrained(path)


def reward_head_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] right-padded inputs -> [B, num_labels] head outputs read at each sequence's last real token.

    Pooling uses the attention mask, not the pad id: SmolLM2 pads with <|im_end|>, which also ends every turn.
    """
    hf = unwrap(model)
    if not hasattr(hf, "score"):
        raise TypeError(f"{type(hf).__name__} has no `score` head; expected a *ForSequenceClassification model")
    hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    last = attention_mask.sum(-1) - 1  # [B]
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, H]
    return hf.score(pooled)  # [B, num_labels]


def save_untrained_stand_ins(run_dir: str | Path, tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerBase,
                             seed: int = 0) -> None:
    """What the sft and rm stages leave in `run_dir` (`sft_model/`, `reward_model/`), as random tiny models:
    for tests and benchmarks that need an RL run without training first. The reward head is saved too, so
    every process that loads it (driver, Ray scorer actors) gets the same head."""
    run_dir = Path(run_dir)
    build_tiny_policy(tiny, tokenizer, seed).save_pretrained(run_dir / "sft_model")
    build_tiny_policy(tiny, tokenizer, seed + 1).save_pretrained(run_dir / "reward_model")
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        rm = load_reward_model(str(run_dir / "reward_model"), 1, tokenizer, torch.device("cpu"))
    rm.save_pretrained(run_dir / "reward_model")
    for name in ("sft_model", "reward_model"):
        tokenizer.save_pretrained(run_dir / name)
