"""Everything gin can configure, registered here so that ``models/`` and ``data/`` stay free of gin.

What is registered (gin name -> Python object):

* ``models.<Class>`` for every encoder of :data:`models.registry.ENCODERS` (``models.CTRGCN``,
  ``models.AGCN``, ``models.HCN``, ``models.Hyperformer``, ...), via ``gin.external_configurable``:
  the encoder files under ``gin/encoders/`` bind their official constructor arguments there.
* ``build_encoder(name)``: builds the encoder registered as ``name`` with those bindings.
* ``models.CSRE`` (``gin/csre.gin``), built by :func:`build_csre` with the run-time arguments
  (encoder, training-set size, labels), which cannot be bound.
* ``by_layout(layout, ntu, ucla)``: picks a value per skeleton layout, for constructor arguments
  that differ between NTU and NW-UCLA beyond the dataset macros (Hyperformer's graph and
  ``joint_label``). Used with a scope: ``models.Hyperformer.graph = @graph/by_layout()``.
* ``Recipe``: the optimiser and schedule of an official training recipe (``gin/recipes/``).
* ``DataConfig``: which HDF5 file, split, stream and feeder transforms (``gin/datasets/`` sets the
  dataset macros, ``gin/base.gin`` wires them in, recipes set the augmentation).
* ``optim.SGD``, ``optim.Adam``, ``nn.CrossEntropyLoss``: the torch classes the trainer needs
  (registered by hand: ``gin.torch`` fails to import under ``-W error``).

:func:`parse_gin` is the one way to read gin files: strict (an unknown configurable, parameter or
macro is an error that names the file and suggests close matches) and finalized.

Every configurable is also a plain Python callable: ``Recipe()``, ``DataConfig(path=..., ...)``,
``build_encoder("ctrgcn", num_class=60, graph="ntu")`` work without any gin file. Gin values are
resolved in the main process (the DataLoader workers do not inherit the gin config): build the
model, recipe and data config there and pass plain objects on.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import gin
import torch

from models import registry

REPO = Path(__file__).resolve().parents[1]
GIN_DIR = REPO / "gin"

__all__ = [
    "CSRE_RUNTIME_ARGS", "GIN_DIR", "REPO", "DataConfig", "GinConfigError", "Recipe", "build_csre",
    "build_encoder", "by_layout", "encoder_configurable", "encoder_gin_file", "parse_gin", "register_csre",
    "register_encoders",
]


class GinConfigError(ValueError):
    """A gin file or binding that does not match anything registered (message: file, close matches)."""


# --------------------------------------------------------------------------- torch classes

SGD = gin.external_configurable(torch.optim.SGD, name="SGD", module="optim")
Adam = gin.external_configurable(torch.optim.Adam, name="Adam", module="optim")
CrossEntropyLoss = gin.external_configurable(torch.nn.CrossEntropyLoss, name="CrossEntropyLoss", module="nn")


# --------------------------------------------------------------------------- encoders

# registry name -> the gin-wrapped class (a thin subclass made by gin.external_configurable)
_ENCODER_WRAPPERS: dict[str, type] = {}
# registry name -> why it could not be imported (e.g. a missing optional dependency)
_ENCODER_IMPORT_ERRORS: dict[str, str] = {}


def _class_name(name: str) -> str:
    return registry.ENCODERS[name].split(":")[1]


def encoder_configurable(name: str) -> str:
    """The gin name of encoder ``name``'s class: ``'ctrgcn'`` -> ``'models.CTRGCN'``."""
    if name not in registry.ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(sorted(registry.ENCODERS))}")
    return f"models.{_class_name(name)}"


def encoder_gin_file(name: str) -> Path:
    """``gin/encoders/<name>.gin``: the encoder's official constructor settings and recipe."""
    return GIN_DIR / "encoders" / f"{name}.gin"


def register_encoders() -> dict[str, type]:
    """Register every encoder of the registry as ``models.<Class>``; idempotent.

    Called at import and again by :func:`parse_gin` and :func:`build_encoder`, so encoders added to
    the registry later are picked up. An encoder whose module fails to import (a missing optional
    dependency) is skipped and the reason kept for the error message of anything that names it.
    """
    for name in registry.ENCODERS:
        if name in _ENCODER_WRAPPERS:
            continue
        try:
            cls = registry.encoder_class(name)
        except ImportError as e:  # pragma: no cover - depends on the environment
            _ENCODER_IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
            continue
        _ENCODER_IMPORT_ERRORS.pop(name, None)
        _ENCODER_WRAPPERS[name] = gin.external_configurable(cls, name=cls.__name__, module="models")
    return dict(_ENCODER_WRAPPERS)


@gin.configurable(module="harness", allowlist=["name"])
def build_encoder(name: str = gin.REQUIRED, **kwargs: Any):
    """Build the encoder registered as ``name`` (``'ctrgcn'``, ``'hcn'``, ...).

    Under gin, the constructor arguments come from the bindings of its class (``models.CTRGCN.*``,
    see ``gin/encoders/<name>.gin``); ``kwargs`` given here override them. Without gin this is
    ``encoder_class(name)(**kwargs)``. Only ``name`` can be bound on ``build_encoder`` itself, so
    a misplaced binding (``build_encoder.num_class``) fails at parse time.
    """
    register_encoders()
    if name not in _ENCODER_WRAPPERS:
        if name in _ENCODER_IMPORT_ERRORS:
            raise ImportError(f"encoder {name!r} could not be imported: {_ENCODER_IMPORT_ERRORS[name]}")
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(sorted(registry.ENCODERS))}")
    return _ENCODER_WRAPPERS[name](**kwargs)


# --------------------------------------------------------------------------- other model classes

# The CSRE wrapper: its hyperparameters come from gin (gin/csre.gin binds ``models.CSRE.*``); what
# only exists at run time (the encoder, the training-set size and its labels) is passed by the
# trainer and cannot be bound (denylisted, so a binding of it fails at parse time).
CSRE_RUNTIME_ARGS = ("encoder", "num_samples", "labels")
_CSRE: list[type] = []  # the gin-wrapped class once registered
_CSRE_IMPORT_ERROR: list[str] = []
_CSRE_SELECTOR = "models.CSRE"


def _csre_entry_is_ours(cls: type) -> bool:
    """Whether gin's registry entry for ``models.CSRE`` is ``cls`` with the run-time denylist."""
    from gin import config as gin_config
    entry = gin_config._REGISTRY.get(_CSRE_SELECTOR)  # noqa: SLF001 - gin has no public lookup of an entry
    return (entry is not None and entry.wrapped is cls and bool(_CSRE) and entry.wrapper is _CSRE[0]
            and set(CSRE_RUNTIME_ARGS) <= set(entry.denylist or ()))


def register_csre() -> type | None:
    """Register ``models.csre.CSRE`` as ``models.CSRE`` with the run-time arguments denylisted;
    None if it cannot be imported.

    Idempotent, and checked on every call (:func:`parse_gin` calls it before parsing): gin keeps
    one entry per name, and registering the same class again (``gin.external_configurable(CSRE,
    name='CSRE', module='models')`` elsewhere, e.g. in a test) silently replaces ours by one
    without the denylist, after which ``models.CSRE.num_samples = 3`` would parse. Such a
    replacement is undone here, so the order in which modules register does not matter.
    """
    try:
        from models.csre import CSRE
    except ImportError as e:  # pragma: no cover - depends on the working tree
        _CSRE_IMPORT_ERROR[:] = [f"{type(e).__name__}: {e}"]
        return None
    _CSRE_IMPORT_ERROR.clear()
    if not _csre_entry_is_ours(CSRE):
        with gin.unlock_config():  # re-registering under a finalized config (build_csre) is allowed
            wrapper = gin.external_configurable(CSRE, name="CSRE", module="models",
                                                denylist=list(CSRE_RUNTIME_ARGS))
        _CSRE[:] = [wrapper]
    return _CSRE[0]


def build_csre(encoder: Any, num_samples: int, labels: Any, **kwargs: Any):
    """``models.CSRE(encoder, num_samples, labels, **kwargs)`` with the gin bindings of ``models.CSRE``
    (kwargs override them). Without gin: the class defaults."""
    cls = register_csre()
    if cls is None:
        raise ImportError(f"models.csre could not be imported: {_CSRE_IMPORT_ERROR[0]}")
    return cls(encoder, num_samples, labels, **kwargs)


#: contrastive heads a run can train with (``TrainConfig.head``): name -> how to build it
HEADS = ("csre", "skeletongcl", "frhead")
#: what the trainer passes to every head at build time; a head takes the ones it needs
#: the run's own facts that a head may take (SkeletonGCL's temperature depends on them): never bound in gin
RUN_CONTEXT_ARGS = ("stream", "benchmark")
HEAD_RUNTIME_ARGS = ("input_shape", "seed", *RUN_CONTEXT_ARGS)


def _accepted(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run-time ``kwargs`` that ``cls``'s constructor takes (``stream``, ``benchmark``: SkeletonGCL only)."""
    params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params or k not in HEAD_RUNTIME_ARGS}


def build_head(name: str, encoder: Any, num_samples: int, labels: Any, **kwargs: Any):
    """The contrastive head ``name`` around ``encoder``, with its gin bindings (kwargs override them).

    Run-time arguments (:data:`HEAD_RUNTIME_ARGS`) a head's constructor does not take are dropped.
    """
    if name == "csre":
        from models.csre import CSRE
        return build_csre(encoder, num_samples, labels, **_accepted(CSRE, kwargs))
    cls = register_heads().get(name)
    if cls is None:
        raise ImportError(f"head {name!r} is not available ({_HEAD_IMPORT_ERRORS.get(name, 'unknown head')}); "
                          f"known: {', '.join(HEADS)}")
    return cls(encoder, num_samples, labels, **_accepted(cls, kwargs))


# name -> gin-wrapped class of the competitor heads (models/heads/), registered like CSRE
_HEAD_WRAPPERS: dict[str, Any] = {}
_HEAD_IMPORT_ERRORS: dict[str, str] = {}
_HEAD_CLASSES = {"skeletongcl": ("models.heads.skeletongcl", "SkeletonGCL"), "frhead": ("models.heads.frhead", "FRHead")}


def register_heads() -> dict[str, Any]:
    """Register the competitor heads as ``models.<Class>`` with the run-time arguments denylisted."""
    import importlib
    for name, (module, cls_name) in _HEAD_CLASSES.items():
        if name in _HEAD_WRAPPERS:
            continue
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except Exception as e:  # noqa: BLE001 - a broken head module must not break runs without it
            _HEAD_IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
            continue
        with gin.unlock_config():
            runtime = [a for a in (*CSRE_RUNTIME_ARGS, *RUN_CONTEXT_ARGS) if a in inspect.signature(cls).parameters]
            _HEAD_WRAPPERS[name] = gin.external_configurable(cls, name=cls_name, module="models", denylist=runtime)
        _HEAD_IMPORT_ERRORS.pop(name, None)
    return dict(_HEAD_WRAPPERS)


_UNSET = object()


@gin.configurable(module="harness")
def by_layout(layout: str = gin.REQUIRED, ntu: Any = _UNSET, ucla: Any = _UNSET) -> Any:
    """The value for skeleton ``layout`` (``'ntu'`` or ``'ucla'``; ``gin/base.gin`` binds ``%LAYOUT``).

    For constructor arguments that differ per layout beyond the dataset macros, e.g.::

        models.Hyperformer.graph = @graph/by_layout()
        graph/by_layout.ntu = 'ntu_hyperformer'
        graph/by_layout.ucla = 'ucla'
    """
    values = {"ntu": ntu, "ucla": ucla}
    if layout not in values:
        raise ValueError(f"by_layout: unknown layout {layout!r}; known: {sorted(values)}")
    if values[layout] is _UNSET:
        scope = gin.current_scope_str()
        where = f"{scope}/by_layout" if scope else "by_layout"
        raise ValueError(f"by_layout: no value for layout {layout!r}; bind {where}.{layout}")
    return values[layout]


# --------------------------------------------------------------------------- recipe

@gin.configurable(module="harness")
@dataclass(frozen=True)
class Recipe:
    """Optimiser and learning-rate schedule of one official training recipe.

    The defaults are the CTR-GCN NTU recipe (``Uason-Chen/CTR-GCN`` ``config/nturgbd-cross-subject/
    default.yaml``), which SkeletonGCL and FR-Head reuse and the others modify; ``gin/recipes/``
    holds every family's values with their sources.

    Schedule (per epoch, as the official ``adjust_learning_rate``): during the first
    ``warm_up_epochs`` epochs ``lr = base_lr * (epoch + 1) / warm_up_epochs``; afterwards ``'step'``
    gives ``base_lr * gamma ** (number of steps <= epoch)`` and ``'exp'`` (HCN) gives
    ``base_lr * gamma ** epoch``. ``momentum`` and ``nesterov`` apply to SGD only.

    ``clip_norm_per_sample``: gradient clipping as HCN-pytorch's ``main.py``: the total L2 norm of
    all gradients is clipped to ``clip_norm_per_sample * batch_size`` (its ``clip *
    batch_size_train``) before each optimiser step; None (the others) does not clip.

    ``drop_last``: the official training loader drops the last, partial batch of an epoch
    (``DataLoader(drop_last=True)``: CTR-GCN and the families built on it); HCN-pytorch keeps it.

    ``amp``: the official trainer trains under ``torch.cuda.amp`` (fp16 autocast + GradScaler) and
    evaluates in fp32 (Hyperformer, BlockGCN, the CSRE code; InfoGCN's Apex O1 likewise).
    ``TrainConfig.precision = 'recipe'`` follows it on CUDA.
    """

    optimizer: str = "sgd"  # 'sgd' | 'adam'
    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-4
    lr_decay_type: str = "step"  # 'step' | 'exp'
    steps: tuple[int, ...] = (35, 55)
    gamma: float = 0.1
    warm_up_epochs: int = 5
    epochs: int = 65
    batch_size: int = 64
    test_batch_size: int = 64
    clip_norm_per_sample: float | None = None
    amp: bool = False
    drop_last: bool = True
    source: str = ""  # where the values come from: "owner/repo path/to/config"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"Recipe.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_decay_type not in ("step", "exp"):
            raise ValueError(f"Recipe.lr_decay_type must be 'step' or 'exp', got {self.lr_decay_type!r}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"Recipe.steps must be increasing, got {list(self.steps)}")
        if self.base_lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.test_batch_size < 1:
            raise ValueError(f"Recipe: base_lr, epochs and batch sizes must be positive ({self})")
        if self.clip_norm_per_sample is not None and not self.clip_norm_per_sample > 0:
            raise ValueError(f"Recipe.clip_norm_per_sample must be positive or None, got {self.clip_norm_per_sample}")
        if not 0 <= self.warm_up_epochs <= self.epochs:
            raise ValueError(f"Recipe.warm_up_epochs={self.warm_up_epochs} must be in [0, epochs={self.epochs}] "
                             f"(shortening a recipe? set Recipe.warm_up_epochs too)")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self.warm_up_epochs:
            return self.base_lr * (epoch + 1) / self.warm_up_epochs
        if self.lr_decay_type == "exp":
            return self.base_lr * self.gamma ** epoch
        return self.base_lr * self.gamma ** sum(epoch >= s for s in self.steps)

    def set_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Set every parameter group of ``optimizer`` to :meth:`lr_at` ``(epoch)``; returns it."""
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def make_optimizer(self, params: Iterable[torch.nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
        """The official optimiser for ``params``, built through the gin configurables ``optim.SGD`` /
        ``optim.Adam`` so that the operative config records every argument. The recipe's values
        are passed explicitly and take precedence over bindings of those configurables."""
        if self.optimizer == "sgd":
            return SGD(params, lr=self.base_lr, momentum=self.momentum, nesterov=self.nesterov,
                       weight_decay=self.weight_decay)
        return Adam(params, lr=self.base_lr, weight_decay=self.weight_decay)

    @property
    def max_grad_norm(self) -> float | None:
        """The gradient-norm bound of one optimiser step (``clip_norm_per_sample * batch_size``), or None."""
        return None if self.clip_norm_per_sample is None else self.clip_norm_per_sample * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data

def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


@gin.configurable(module="harness")
@dataclass(frozen=True)
class DataConfig:
    """Which dataset file, split and stream to read, and the feeder's transforms.

    ``path``, ``split`` and ``num_class`` have no honest default (``gin.REQUIRED``: the dataset
    files under ``gin/datasets/`` provide them); ``num_point``/``num_person`` default to NTU's 25/2,
    the official constructors' defaults. ``None`` for ``window``, the p-intervals and
    ``random_rot`` means the feeder's official default for the file's layout (see
    :class:`data.feeder.SkeletonFeeder`). ``repeat`` applies to the training part only (NW-UCLA
    recipes use 5), ``random_rot`` too; ``train_p_interval`` / ``test_p_interval`` are the NTU
    crop ratios of the two parts. NTU-only options set for a 20-joint (NW-UCLA) config are an
    error: that means an NTU recipe was combined with the NW-UCLA dataset file. ``origin_joint``:
    subtract that joint (1-based) of person 0 from every joint in every frame (HCN-pytorch's
    ``origin_transfer``, joint 2), or None (checked against the file's layout by the feeder).
    """

    path: str = gin.REQUIRED
    split: str = gin.REQUIRED
    num_class: int = gin.REQUIRED
    num_point: int = 25
    num_person: int = 2
    window: int | None = None
    modality: str = "joint"
    repeat: int = 1
    train_p_interval: tuple[float, ...] | None = None
    test_p_interval: tuple[float, ...] | None = None
    random_rot: float | None = None
    spine_relative: bool = False
    origin_joint: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "train_p_interval", _floats(self.train_p_interval))
        object.__setattr__(self, "test_p_interval", _floats(self.test_p_interval))
        if self.num_class < 1 or self.num_point < 1 or self.num_person < 1 or self.repeat < 1:
            raise ValueError(f"DataConfig: num_class, num_point, num_person and repeat must be >= 1 ({self})")
        if self.window is not None and self.window < 1:
            raise ValueError(f"DataConfig.window must be >= 1, got {self.window}")
        for name in ("train_p_interval", "test_p_interval"):
            value = getattr(self, name)
            if value is not None and (len(value) not in (1, 2) or not all(0 < p <= 1 for p in value)):
                raise ValueError(f"DataConfig.{name} must be one or two values in (0, 1], got {value}")
        from models.graph import layout_for
        layout = layout_for(num_joints=self.num_point).name
        ntu_only = {k: getattr(self, k) for k in ("train_p_interval", "test_p_interval", "random_rot")
                    if getattr(self, k) is not None}
        if layout != "ntu" and ntu_only:
            raise ValueError(
                f"DataConfig: {', '.join(f'{k}={v}' for k, v in ntu_only.items())} are NTU options, but "
                f"num_point={self.num_point} is the {layout} layout; for NW-UCLA use the recipe's "
                f"*_ucla.gin variant after the encoder file (see gin/README.md)")

    @property
    def layout(self) -> str:
        """Skeleton layout name of ``num_point`` (``'ntu'`` or ``'ucla'``)."""
        from models.graph import layout_for
        return layout_for(num_joints=self.num_point).name

    def resolve_path(self, root: str | os.PathLike | None = None) -> Path:
        """``path``; a relative path is taken relative to ``root`` (default: the repository)."""
        p = Path(self.path)
        return p if p.is_absolute() else Path(root or REPO) / p

    def feeder(self, part: str, *, seed: int = 0, subset: Any = None, root: str | os.PathLike | None = None,
               **overrides: Any):
        """A :class:`data.feeder.SkeletonFeeder` of ``part`` (``'train'`` or ``'test'``).

        Checks that the file agrees with ``num_point``, ``num_person`` and ``num_class`` (a dataset
        gin file combined with the wrong HDF5 fails here, not after an epoch).
        """
        from data.feeder import SkeletonFeeder
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        train = part == "train"
        kwargs: dict[str, Any] = dict(
            split=self.split, part=part, modality=self.modality, window=self.window,
            p_interval=self.train_p_interval if train else self.test_p_interval,
            random_rot=self.random_rot if train else None, spine_relative=self.spine_relative,
            origin_joint=self.origin_joint, repeat=self.repeat if train else 1, seed=seed, subset=subset)
        kwargs.update(overrides)
        path = self.resolve_path(root)
        feeder = SkeletonFeeder(path, **kwargs)
        if feeder.layout.num_joints != self.num_point:
            raise ValueError(f"{path}: {feeder.layout.num_joints} joints, but num_point={self.num_point}")
        if feeder.num_person != self.num_person:
            raise ValueError(f"{path}: {feeder.num_person} persons per sample, but num_person={self.num_person}")
        if len(feeder.labels) and int(feeder.labels.max()) >= self.num_class:
            raise ValueError(f"{path}: label {int(feeder.labels.max())} >= num_class={self.num_class}")
        return feeder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- strict parsing

_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching '([^']+)'")
_UNKNOWN_REFERENCE = re.compile(r"No configurable matching reference '@([^'(]+)")
_DENYLISTED = re.compile(r"Configurable '([^']+)' has denylisted kwarg '([^']+)'")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't (?:have a parameter named|include kwarg) '([^']+)'")


def _registered() -> list[Any]:
    """The registered configurables, without gin's own (macro, constant, ...)."""
    from gin import config as gin_config
    seen, out = set(), []
    for _, configurable in gin_config._REGISTRY.items():  # noqa: SLF001 - gin has no public listing
        if configurable.selector.startswith("gin.") or id(configurable) in seen:
            continue
        seen.add(id(configurable))
        out.append(configurable)
    return out


def _parameters(configurable: Any) -> list[str]:
    try:
        sig = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return []
    names = [p.name for p in sig.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    if configurable.allowlist:
        names = [n for n in names if n in configurable.allowlist]
    if configurable.denylist:
        names = [n for n in names if n not in configurable.denylist]
    return names


def _find(selector: str) -> Any | None:
    from gin import config as gin_config
    try:
        return gin_config._REGISTRY.get_match(selector)  # noqa: SLF001
    except (KeyError, ValueError):
        return None


def _close(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``word``; dotted names are compared by their last component (so that the
    shared ``models.`` prefix does not make every encoder look close), case-insensitively second."""
    by_key: dict[str, list[str]] = {}
    for c in sorted(set(candidates)):
        by_key.setdefault(c.rsplit(".", 1)[-1], []).append(c)
    key = word.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.6)
    if not close:
        lower = {k.lower(): k for k in by_key}
        close = [lower[k] for k in difflib.get_close_matches(key.lower(), list(lower), n=n, cutoff=0.6)]
    return [full for k in close for full in by_key[k]]


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = _close(word, candidates)
    return f"did you mean: {', '.join(close)}?" if close else "no close match"


def _explain(error: Exception, source: str) -> str:
    """A one-line diagnosis with close matches, then gin's own message (file, line, include chain)."""
    text = str(error)
    head = None
    if m := _DENYLISTED.search(text):
        head = (f"parameter {m.group(2)!r} of {m.group(1)} cannot be bound: it is passed at run time "
                f"(by the trainer)")
    elif m := _UNKNOWN_PARAMETER.search(text):
        selector, param = m.groups()
        c = _find(selector)
        params = _parameters(c) if c is not None else []
        head = (f"unknown parameter {param!r} of {selector} "
                f"({_suggest(param, params)}; its parameters: {', '.join(params) or 'none'})")
        if c is not None and c.selector.endswith("build_encoder"):
            head += "; constructor arguments are bound on the encoder class, e.g. models.CTRGCN.num_class"
    elif m := _UNKNOWN_REFERENCE.search(text) or _UNKNOWN_CONFIGURABLE.search(text):
        selector = m.group(1).split("/")[-1]
        from gin import config as gin_config
        if "." in selector:
            names = [c.selector for c in _registered()]
        else:  # answer in the form used: short names where they are unambiguous
            names = [gin_config._REGISTRY.minimal_selector(c.selector) for c in _registered()]  # noqa: SLF001
        head = f"unknown configurable {selector!r} ({_suggest(selector, names)})"
        unavailable = [n for n in _ENCODER_IMPORT_ERRORS if selector.split(".")[-1] == _class_name(n)]
        for n in unavailable:
            head += f"; encoder {n!r} is registered but failed to import: {_ENCODER_IMPORT_ERRORS[n]}"
    if head is None:
        return f"{source}: {text}"
    return f"{source}: {head}\n{text}"


def _check_macros(sources: Sequence[str]) -> None:
    """Every ``%MACRO`` referenced by a binding is defined (gin only notices when it is called)."""
    from gin import config as gin_config
    cfg = gin_config._CONFIG  # noqa: SLF001
    defined = sorted(scope for (scope, selector) in cfg if selector == "gin.macro" and scope)
    missing: dict[str, list[str]] = {}
    for (scope, selector), params in cfg.items():
        for param, value in params.items():
            for ref in gin_config.iterate_references(value):
                if ref.selector == "gin.macro" and ref.config_key not in cfg:
                    name = ref.scoped_selector.rsplit("/", 1)[0]
                    where = f"{scope + '/' if scope else ''}{selector}.{param}"
                    missing.setdefault(name, []).append(where)
    if missing:
        lines = []
        for name, users in sorted(missing.items()):
            close = _close(name, defined)
            hint = f"; did you mean %{', %'.join(close)}?" if close else ""
            lines.append(f"undefined macro %{name} (used by {', '.join(users)}{hint})")
        files = ", ".join(sources) or "no files"
        raise GinConfigError(f"{files}: " + "; ".join(lines)
                             + f". Defined macros: {', '.join(defined) or 'none'}. A dataset file "
                               f"(gin/datasets/*.gin) defines NUM_CLASS, NUM_POINT, NUM_PERSON, WINDOW, "
                               f"DATA_PATH, SPLIT and LAYOUT.")


def _ensure_search_path() -> None:
    """Resolve ``include 'gin/...'`` against the repository first, whatever the working directory.

    Put first (not appended with ``gin.add_config_file_search_path``) because a miss in an earlier
    prefix makes gin's resource reader log an error line for every include.
    """
    from gin import config as gin_config
    prefixes = gin_config._LOCATION_PREFIXES  # noqa: SLF001 - no public way to order the search path
    if prefixes[:1] != [str(REPO)]:
        if str(REPO) in prefixes:
            prefixes.remove(str(REPO))
        prefixes.insert(0, str(REPO))


def _resolve(path: str | os.PathLike) -> str:
    """A gin file name as given if it exists (absolute or relative to the working directory),
    else relative to the repository root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    if (REPO / p).exists():
        return str(REPO / p)
    raise FileNotFoundError(f"gin file {os.fspath(path)!r} not found (looked in {Path.cwd()} and {REPO})")


def parse_gin(files: Sequence[str | os.PathLike] = (), bindings: Sequence[str] = (), *,
              finalize: bool = True, check_macros: bool = True) -> None:
    """Parse gin ``files`` then ``bindings`` (later wins), strictly; then lock the config.

    Relative file names resolve against the working directory, then the repository root (so
    ``gin/encoders/ctrgcn.gin`` works from anywhere). Unknown configurables, parameters,
    references and (with ``check_macros``) undefined macros raise :class:`GinConfigError`, whose
    message names the file (and line, with gin's include chain) and the closest registered
    names. Call ``gin.clear_config()`` before parsing a second configuration in one process.
    """
    register_encoders()
    register_csre()
    register_heads()
    import harness.train  # noqa: F401 - registers TrainConfig (profile files bind it)
    _ensure_search_path()
    sources = []
    for f in files:
        source = os.fspath(f)
        sources.append(source)
        path = _resolve(f)
        try:
            gin.parse_config_file(path, skip_unknown=False)
        except OSError as e:  # a missing include
            raise FileNotFoundError(f"{source}: {e}") from None
        except (ValueError, KeyError, TypeError, SyntaxError) as e:
            raise GinConfigError(_explain(e, source)) from None
    bindings = [b for b in bindings if b.strip()]
    if bindings:
        try:
            gin.parse_config(list(bindings), skip_unknown=False)
        except (ValueError, KeyError, TypeError, SyntaxError) as e:
            raise GinConfigError(_explain(e, "gin bindings")) from None
        sources.append("gin bindings")
    if check_macros:
        _check_macros(sources)
    if finalize:
        gin.finalize()


register_encoders()
register_csre()
