"""Reward functions (`reward.functions`): Python callables in TRL's convention, loaded by name and called by the
Scorer on every batch, alone or beside the reward model (actors/scorer.py combines them).

A name is `FILE.py:NAME` (a file, relative to the working directory), `module:NAME` (an importable module) or a
built-in of the task (tasks/base.py `Task.reward_functions`: `<task>_gold`, the ifeval task's `ifeval_strict` and
`ifeval_loose`). Each is resolved when the config is loaded (`check`), so a name that does not resolve stops the run
before anything is written, naming reward.functions; the scorer loads them again in its own process (a Ray scorer
actor too).

The call follows TRL's GRPOTrainer ("Using a custom reward function") for a conversational data set: keyword
arguments `prompts` (each prompt's chat messages), `completions` (each a list holding one assistant message),
`completion_ids` (the sampled token ids, EOS included when produced, no padding) and each of the prompt's extra data
columns as a list (`Task.prompt_columns`); one float per completion comes back. `None` means "does not apply to this
completion", as in TRL: it is left out of the weighted sum (adds 0) and of the function's logged mean. Where this
deviates from TRL, and why:
- no `trainer_state` argument: there is no transformers Trainer here (a function that needs the step must not
  require it);
- a NaN or inf, a non-number or a wrong number of values stops the run naming the function and the first bad row
  (TRL reads a NaN as None and lets inf through, which would train on a silent error);
- an `async def` function is awaited, one function after the other (TRL overlaps several async functions).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import Config, ConfigError, RewardConfig
from common.errors import UserError
from tasks.base import Messages, Task

KEY = "reward.functions"


class RewardFunctionError(UserError):
    """A reward function raised, or returned something other than one finite number (or None) per completion."""


@dataclass(frozen=True)
class RewardFunction:
    spec: str  # as configured: FILE.py:NAME, module:NAME or a built-in name
    name: str  # what its scores are logged as: reward_fn/<name>
    fn: Callable
    weight: float


# ---------------------------------------------------------------------------------------------------- loading


def _fail(spec: str, problem: str) -> ConfigError:
    return ConfigError(f"{KEY}: {spec}: {problem}")


@functools.lru_cache(maxsize=32)
def _load_file(path: str, mtime_ns: int):  # noqa: ARG001 - the file's mtime keys the cache: an edited file reloads
    """Execute a reward file once per process under a module name of its own (so two files of one stem never share
    a module, and dataclasses inside it find their module)."""
    module_name = f"reward_file_{Path(path).stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _where_raised(error: BaseException, path: str | None) -> str:
    """' (FILE line N)' of the deepest frame of the error inside `path` (the user's file), else ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if path is None or f.filename == path]
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames and path else ""


def _import(spec: str, where: str) -> object:
    """The module of FILE.py:NAME or module:NAME; ConfigError naming the spec when it cannot be imported."""
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            relative = "" if Path(where).expanduser().is_absolute() else \
                f" (a relative FILE.py is read from the working directory, {Path.cwd()})"
            raise _fail(spec, f"no file {path}{relative}")
        try:
            return _load_file(str(path), path.stat().st_mtime_ns)
        except Exception as e:  # noqa: BLE001 - whatever the user's file raises on import is reported in one line
            raise _fail(spec, f"importing {path.name} raised {type(e).__name__}: {e}{_where_raised(e, str(path))}; "
                              f"fix the file") from None
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name == where or where.startswith(f"{e.name}."):
            raise _fail(spec, f"no module {where!r} on the Python path (a file needs its .py suffix: FILE.py:NAME)") \
                from None
        raise _fail(spec, f"importing {where} raised ModuleNotFoundError: {e}") from None
    except Exception as e:  # noqa: BLE001 - as for a file
        raise _fail(spec, f"importing {where} raised {type(e).__name__}: {e}") from None


def resolve(spec: str, builtins: dict[str, Callable]) -> tuple[str, Callable]:
    """(log name, function) of one reward.functions entry; ConfigError naming it when it does not resolve."""
    where, sep, name = spec.rpartition(":")
    if not sep:
        if spec not in builtins:
            offered = ", ".join(builtins) or "none"
            raise _fail(spec, f"not a built-in reward function of this task (it offers: {offered}); a file or module "
                              f"is named FILE.py:NAME or module:NAME")
        return spec, builtins[spec]
    module = _import(spec, where)
    if not hasattr(module, name):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise _fail(spec, f"{where} has no {name!r} (its functions: {', '.join(found) or 'none'})")
    fn = getattr(module, name)
    if not callable(fn):
        raise _fail(spec, f"{name} in {where} is a {type(fn).__name__}, not a function")
    return name, fn


def load(reward: RewardConfig, task: Task | None) -> list[RewardFunction]:
    """The configured reward functions with their weights, resolved in this process; built-in names need the task."""
    builtins = task.reward_functions() if task is not None else {}
    weights = reward.function_weights or (1.0,) * len(reward.functions)
    out: list[RewardFunction] = []
    for spec, weight in zip(reward.functions, weights):
        name, fn = resolve(spec, builtins)
        clash = next((f.spec for f in out if f.name == name), None)
        if clash is not None:
            raise _fail(spec, f"{clash} is also logged as reward_fn/{name}; give one of the functions another name")
        out.append(RewardFunction(spec, name, fn, float(weight)))
    return out


def check(cfg: Config) -> None:
    """Resolve cfg's reward functions now (at config load): ConfigError naming reward.functions if one does not."""
    if cfg.reward.functions:
        from tasks.registry import load_task  # the task's built-in names
        load(cfg.reward, load_task(cfg))


def with_absolute_files(cfg: Config) -> Config:
    """cfg with each FILE.py made absolute against this process's working directory: a Ray scorer actor loads the
    file in its own process, whose working directory may differ (the path must be readable on its node)."""
    def absolute(spec: str) -> str:
        where, sep, name = spec.rpartition(":")
        return f"{Path(where).expanduser().resolve()}:{name}" if sep and where.endswith(".py") else spec

    functions = tuple(absolute(s) for s in cfg.reward.functions)
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, functions=functions))


def describe(reward: RewardConfig) -> dict:
    """What the reward is made of, for eval.json, rl_metrics.json and the report."""
    weights = reward.function_weights or (1.0,) * len(reward.functions)
    parts = ([f"{reward.model_weight:g} x reward model"] if reward.model_weight else []) + \
        [f"{w:g} x {s}" for s, w in zip(reward.functions, weights)]
    text = " + ".join(parts) + ("" if reward.model_weight else " (no reward model)")
    if parts == ["1 x reward model"]:
        text = "reward model"  # the default: the paper's reward
    return {"reward_model": reward.model_weight, "functions": dict(zip(reward.functions, weights)), "text": text}


# ---------------------------------------------------------------------------------------------------- calling


def _check_values(values, n: int, where: str, prompts: list[Messages]) -> list[float]:
    """One finite float per completion (None -> NaN, as TRL reads it), or RewardFunctionError naming the first bad
    row (its index in the batch and its prompt)."""
    try:
        values = list(values)
    except TypeError:
        raise RewardFunctionError(f"{where} returned a {type(values).__name__}, not a list of {n} floats (one per "
                                  f"completion)") from None
    if len(values) != n:
        raise RewardFunctionError(f"{where} returned {len(values)} values for {n} completions; return one float (or "
                                  f"None) per completion, in order")
    out = []
    for row, v in enumerate(values):
        ok = isinstance(v, numbers.Real) or (isinstance(v, torch.Tensor) and v.numel() == 1)  # numpy's too
        x = float("nan") if v is None else float(v) if ok else None
        if x is None or (v is not None and not math.isfinite(x)):
            prompt = prompts[row][-1]["content"][:60]
            raise RewardFunctionError(f"{where} returned {v!r} at row {row} (prompt {prompt!r}); return a finite "
                                      f"float, or None where the function does not apply")
        out.append(x)
    return out


def _run_coroutine(coroutine):
    """Await an async reward function's result; in a thread of its own where this thread already runs an event loop
    (a notebook), since asyncio.run refuses to nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class RewardFunctions:
    """The loaded functions of one prompt pool; `__call__` scores a batch of its completions, function by function."""

    def __init__(self, functions: list[RewardFunction], prompts: list[Messages], columns: list[dict],
                 tokenizer=None) -> None:
        self.functions, self.prompts, self.columns, self.tokenizer = functions, prompts, columns, tokenizer
        self.keys = list(dict.fromkeys(k for c in columns for k in c))

    def __bool__(self) -> bool:
        return bool(self.functions)

    def __call__(self, prompt_indices: list[int], texts: list[str],
                 completion_ids: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """name -> [N] float32 scores (NaN where a function returned None)."""
        if completion_ids is None:  # text only (a peer trainer's completions): the policy tokenizer's ids
            completion_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        # copies of the pool's messages: a function that edits them leaves the pool as it was
        prompts = [[dict(m) for m in self.prompts[i]] for i in prompt_indices]
        kwargs = {k: [self.columns[i].get(k) for i in prompt_indices] for k in self.keys}
        # TRL's named arguments win over a data column of the same name
        kwargs.update(prompts=prompts, completions=[[{"role": "assistant", "content": t}] for t in texts],
                      completion_ids=[list(ids) for ids in completion_ids])
        out = {}
        for f in self.functions:
            where = f"reward function {f.spec} ({KEY})"
            try:
                values = f.fn(**kwargs)
                if inspect.iscoroutine(values):  # an async def function
                    values = _run_coroutine(values)
            except Exception as e:  # noqa: BLE001 - whatever the user's function raises is reported in one line
                path = inspect.getsourcefile(f.fn) if inspect.isfunction(f.fn) else None
                raise RewardFunctionError(f"{where} raised {type(e).__name__}: {e}{_where_raised(e, path)} on a batch "
                                          f"of {len(texts)} completions") from e
            out[f.name] = torch.tensor(_check_values(values, len(texts), where, prompts), dtype=torch.float32)
        return out

    def weighted_sum(self, scores: dict[str, torch.Tensor], alone: bool) -> torch.Tensor:
        """sum_f weight_f * score_f, a None (NaN) adding 0: TRL's nansum. `alone` (no reward model): warn, as TRL
        does, where every function returned None (that completion's whole reward is then 0)."""
        total = sum(f.weight * torch.nan_to_num(scores[f.name], nan=0.0) for f in self.functions)
        every_none = torch.stack([scores[f.name].isnan() for f in self.functions]).all(0)
        if alone and every_none.any():
            warnings.warn(f"{KEY}: every function returned None for some completions; their reward is 0 (as in "
                          f"TRL): check that one of them applies to every prompt", stacklevel=2)
        return total
