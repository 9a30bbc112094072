"""The worker's replies, one definition shared by the worker (which builds them) and the executors (which read them).

A sandboxed worker (``discopop.execution.worker``) answers each request with one JSON object over its pipe.
Before this module the reply was a dict described in the worker's docstring and read by key wherever a result
went (the cascade, the tuning sweep, the judge, the result store): a missing or misspelt key surfaced as a
``KeyError`` deep inside the loop, and nothing said which side was out of date. Here each reply is a frozen
dataclass with a ``version``; :meth:`to_wire` gives the JSON object the worker sends and :func:`parse_reply`
(``from_wire``) checks every field on the trusted side, so a reply of another version, or a malformed one, is a
:class:`MessageError` with one line naming the field, and the job fails with that reason (the run goes on).

Every reply carries ``ok`` on the wire (``True`` for :class:`InitReply`, :class:`CheckReply`, :class:`TrainReply`;
``False`` for :class:`FailureReply`) and ``seconds`` (the worker's own time on the request). ``sandbox_layers`` and
``sandbox_exit`` belong to the sandbox's envelope: ``SandboxedProcess.request`` takes them off before a reply is
parsed here.

This module imports nothing of the package and nothing heavy: the worker imports it before it locks itself down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

VERSION = 1  # bump when a field is added, removed or changes meaning; both sides read this one constant


class MessageError(ValueError):
    """A reply that is not what this side of the protocol speaks: another version, a missing or ill-typed field."""


# ---- field checks (what JSON can carry; values pass unchanged, so an archive written from them is unchanged) ----

_DESCRIBED: dict[Callable[[Any], bool], str] = {}  # check -> what it expects, for the error line


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def optional(v: Any) -> bool:
        return v is None or check(v)

    _DESCRIBED[optional] = f"null or {_DESCRIBED[check]}"
    return optional


def _numbers(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(map(_number, v))


def _strings(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _mapping(v: Any) -> bool:
    return isinstance(v, Mapping)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


_DESCRIBED.update({_number: "a number", _numbers: "a list of numbers", _strings: "a list of strings",
                   _int: "an integer", _mapping: "an object", _text: "a string", _flag: "true or false"})


class _Message:
    """``to_wire``/``from_wire`` for the frozen dataclasses below, driven by each class's ``_checks``."""

    OK: ClassVar[bool] = True
    KIND: ClassVar[str] = "reply"
    _checks: ClassVar[dict[str, Callable[[Any], bool]]] = {}
    _tuples: ClassVar[tuple[str, ...]] = ()  # list fields kept as tuples (frozen means frozen)
    _omit_none: ClassVar[tuple[str, ...]] = ()  # optional fields left off the wire when unset, as before

    def __post_init__(self) -> None:
        for name in self._tuples:  # a list given by a builder becomes a tuple: a frozen reply is not changed later
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent over the pipe (and kept by the result store)."""
        out: dict[str, Any] = {"ok": self.OK}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self._omit_none:
                continue
            out[f.name] = list(value) if f.name in self._tuples and value is not None else value
        return out

    @classmethod
    def from_wire(cls, data: Any) -> Any:
        """The reply in ``data`` (a decoded JSON object), checked field by field; :class:`MessageError` if it is not
        this version's ``KIND`` reply."""
        where = f"worker {cls.KIND} reply"
        if not isinstance(data, Mapping):
            raise MessageError(f"{where}: not an object ({type(data).__name__})")
        version = data.get("version")
        if version != VERSION:
            raise MessageError(f"{where}: field 'version' is {version!r}; this side speaks version {VERSION}")
        if data.get("ok") is not cls.OK:
            raise MessageError(f"{where}: field 'ok' is {data.get('ok')!r}, expected {cls.OK}")
        declared = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(declared) - {"ok"})
        if unknown:
            raise MessageError(f"{where}: field {unknown[0]!r} is not part of version {VERSION}")
        values = {}
        for name, f in declared.items():
            if name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise MessageError(f"{where}: field {name!r} is missing")
                continue
            value = data[name]
            check = cls._checks.get(name)
            if check is not None and not check(value):
                raise MessageError(f"{where}: field {name!r} is {_shown(value)}, expected {_expected(check)}")
            values[name] = value
        return cls(**values)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expected(check: Callable[[Any], bool]) -> str:
    return _DESCRIBED.get(check, "a value of another type")


@dataclass(frozen=True)
class InitReply(_Message):
    """The worker is ready: where it trains (CUDA initialises in the worker, before it seals itself)."""

    KIND: ClassVar[str] = "init"
    seconds: float
    device: str = "cpu"  # "cpu" | "cuda"
    precision: str | None = None  # the fine-tune's dtype name; None without a task
    lora: bool = False
    sandbox_layers: tuple[str, ...] = ()  # the child-side isolation layers (the sandbox's envelope takes them)
    version: int = VERSION
    _checks: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "seconds": _number, "device": _text, "precision": _optional(_text), "lora": _flag,
        "sandbox_layers": _strings, "version": _int}
    _tuples: ClassVar[tuple[str, ...]] = ("sandbox_layers",)


@dataclass(frozen=True)
class CheckReply(_Message):
    """The numeric checks passed: their report (``contract.checks.CheckReport.as_dict``: behaviour fingerprint,
    curve, diagnostics), which the contract defines and the cascade stores as the row's ``checks``."""

    KIND: ClassVar[str] = "check"
    checks: dict[str, Any]
    seconds: float = 0.0
    version: int = VERSION
    _checks: ClassVar[dict[str, Callable[[Any], bool]]] = {"checks": _mapping, "seconds": _number, "version": _int}


@dataclass(frozen=True)
class TrainReply(_Message):
    """One fine-tune and its score on held-out prompts (``fitness = reward - kl_coef * kl``, per prompt averaged).

    Per-prompt lists are in ``task.prompts(split)`` order, so two candidates' runs pair up prompt by prompt
    (``fitness.stats``). Built by the worker; the main process may derive one (a judge's grading, ``replace``).
    """

    KIND: ClassVar[str] = "train"
    fitness: float
    reward: float
    kl: float
    steps: int  # optimizer steps taken (a short fine-tune takes a share of ``full_steps``)
    per_prompt: tuple[float, ...]  # reward per scored prompt
    per_prompt_kl: tuple[float, ...]
    kl_coef: float
    greedy: float | None = None  # greedy-decoding reward (None on a judged task)
    full_steps: int | None = None  # a full run's steps (None where the tier has no short fine-tune)
    final_loss: float | None = None
    train_seconds: float = 0.0
    step_seconds: float = 0.0  # the optimizer steps alone (the cascade's timing split)
    score_seconds: float = 0.0
    train_metrics: dict[str, Any] = field(default_factory=dict)  # the trainer's logged curve and counters
    per_prompt_greedy: tuple[float, ...] = ()  # each prompt's greedy reward (empty on a judged task)
    learning_rate: float | None = None  # the rate actually used
    peak_gpu_mb: float | None = None  # None on the CPU
    # How far the loss's behaviour moved during training and on the training pairs' references (1 - cosine)
    behaviour: dict[str, float | None] | None = None
    beta: float | None = None  # the job's own beta (the protocol's beta axis); None: the run's training.beta
    completions: tuple[str, ...] | None = None  # a judged task's greedy completions, graded in the main process
    judge: dict[str, Any] | None = None  # set in the main process by the judge: its grading summary and cost
    # A grid-point job's tuning seeds' mean fitness on every scored prompt (training.tune_seeds > 0, the exact tier):
    # what chooses the rate (fitness.tuning.split_fitness); None: the job had none (the per-prompt lists choose)
    tune_fitness: float | None = None
    seconds: float = 0.0
    version: int = VERSION
    _checks: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "fitness": _number, "reward": _number, "kl": _number, "steps": _int, "per_prompt": _numbers,
        "per_prompt_kl": _numbers, "kl_coef": _number, "greedy": _optional(_number), "full_steps": _optional(_int),
        "final_loss": _optional(_number), "train_seconds": _number, "step_seconds": _number, "score_seconds": _number,
        "train_metrics": _mapping, "per_prompt_greedy": _numbers, "learning_rate": _optional(_number),
        "peak_gpu_mb": _optional(_number), "behaviour": _optional(_mapping), "beta": _optional(_number),
        "completions": _optional(_strings), "judge": _optional(_mapping), "tune_fitness": _optional(_number),
        "seconds": _number, "version": _int}
    _tuples: ClassVar[tuple[str, ...]] = ("per_prompt", "per_prompt_kl", "per_prompt_greedy", "completions")
    _omit_none: ClassVar[tuple[str, ...]] = ("beta", "completions", "judge", "tune_fitness")

    def finite(self) -> bool:
        """Whether the score is a number (a worker reports a non-finite one as a ``score`` failure)."""
        tune = () if self.tune_fitness is None else (self.tune_fitness,)
        return all(map(math.isfinite, (self.fitness, self.reward, self.kl, *tune)))


@dataclass(frozen=True)
class FailureReply(_Message):
    """The request failed at ``stage`` (``executors.WORKER_STAGES``) for the one-line ``error``."""

    OK: ClassVar[bool] = False
    KIND: ClassVar[str] = "failure"
    stage: str
    error: str
    traceback: str | None = None  # the worker's own error (not the candidate's): the last frames, for a bug report
    seconds: float = 0.0
    version: int = VERSION
    _checks: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "stage": _text, "error": _text, "traceback": _optional(_text), "seconds": _number, "version": _int}
    _omit_none: ClassVar[tuple[str, ...]] = ("traceback",)


Reply = InitReply | CheckReply | TrainReply | FailureReply
_SUCCESS: dict[str, type[InitReply | CheckReply | TrainReply]] = {"init": InitReply, "check": CheckReply,
                                                                   "train": TrainReply}


def parse_reply(op: str, data: Any) -> Reply:
    """The worker's reply to an ``op`` request, typed; :class:`MessageError` (one line, naming the field) if it is
    not a reply of this version."""
    if not isinstance(data, Mapping):
        raise MessageError(f"worker {op} reply: not an object ({type(data).__name__})")
    ok = data.get("ok")
    if ok is False:
        return FailureReply.from_wire(data)
    if ok is not True:
        raise MessageError(f"worker {op} reply: field 'ok' is {_shown(ok)}, expected true or false")
    if op not in _SUCCESS:
        raise MessageError(f"worker reply to unknown op {op!r}")
    return _SUCCESS[op].from_wire(data)
