"""jaxhp: train many models at once and choose their hyperparameters well.

Parameters are a JAX pytree learned by a jit-compiled Optax step inside
``lax.scan``; hyperparameters are arguments fixed before training: static
fields are compile-time constants, tunable fields are traced float leaves
(float32; float64 under ``jax_enable_x64``), so ``jax.vmap`` trains many
settings in one compiled program.
"""

from jaxhp import datasets as datasets
from jaxhp import interop as interop
from jaxhp import models as models
from jaxhp import nn as nn
from jaxhp._checkpoint import CheckpointLocked as CheckpointLocked
from jaxhp._checkpoint import CheckpointMismatch as CheckpointMismatch
from jaxhp._data import DataError as DataError
from jaxhp._data import Folds as Folds
from jaxhp._data import Split as Split
from jaxhp._data import check_split as check_split
from jaxhp._data import sample_batch as sample_batch
from jaxhp._data import split_data as split_data
from jaxhp._data import standardize as standardize
from jaxhp._distributions import Distribution as Distribution
from jaxhp._distributions import SpaceError as SpaceError
from jaxhp._distributions import choice as choice
from jaxhp._distributions import fixed as fixed
from jaxhp._distributions import intrange as intrange
from jaxhp._distributions import loguniform as loguniform
from jaxhp._distributions import uniform as uniform
from jaxhp._engine import CallbackError as CallbackError
from jaxhp._folds import FoldWarning as FoldWarning
from jaxhp._folds import kfold as kfold
from jaxhp._hosts import ChunkDefaults as ChunkDefaults
from jaxhp._hosts import chunk_defaults as chunk_defaults
from jaxhp._hparams import Field as Field
from jaxhp._hparams import HParams as HParams
from jaxhp._hparams import HParamsError as HParamsError
from jaxhp._hparams import padded_size as padded_size
from jaxhp._hparams import stack as stack
from jaxhp._hparams import static as static
from jaxhp._hparams import tunable as tunable
from jaxhp._hparams import unit_mask as unit_mask
from jaxhp._io import FormatError as FormatError
from jaxhp._model import Model as Model
from jaxhp._model import ModelError as ModelError
from jaxhp._online import HypergradientDescentState as HypergradientDescentState
from jaxhp._online import hypergradient_descent as hypergradient_descent
from jaxhp._record import ChunkRecord as ChunkRecord
from jaxhp._record import GroupInfo as GroupInfo
from jaxhp._record import Rung as Rung
from jaxhp._result import Selection as Selection
from jaxhp._result import SelectionError as SelectionError
from jaxhp._result import SweepResult as SweepResult
from jaxhp._result import TestReport as TestReport
from jaxhp._search.bayesopt import BayesOptResult as BayesOptResult
from jaxhp._search.bayesopt import bayesopt as bayesopt
from jaxhp._search.gp import GPSurrogate as GPSurrogate
from jaxhp._search.halving import HalvingResult as HalvingResult
from jaxhp._search.halving import hyperband as hyperband
from jaxhp._search.halving import hyperband_brackets as hyperband_brackets
from jaxhp._search.halving import rung_budgets as rung_budgets
from jaxhp._search.halving import successive_halving as successive_halving
from jaxhp._search.hypergrad import Hypergradient as Hypergradient
from jaxhp._search.hypergrad import hypergradient as hypergradient
from jaxhp._search.optuna_bridge import OptunaResult as OptunaResult
from jaxhp._search.optuna_bridge import optuna_search as optuna_search
from jaxhp._search.pbt import PBTResult as PBTResult
from jaxhp._search.pbt import pbt as pbt
from jaxhp._search.sweep import SweepWarning as SweepWarning
from jaxhp._search.sweep import sweep as sweep
from jaxhp._search.tune import TuneResult as TuneResult
from jaxhp._search.tune import tune_gradient as tune_gradient
from jaxhp._space import Space as Space
from jaxhp._space import grid as grid
from jaxhp._space import quasirandom as quasirandom
from jaxhp._space import random as random
from jaxhp._table import SettingsTable as SettingsTable
from jaxhp._train import Run as Run
from jaxhp._train import TrainState as TrainState
from jaxhp._train import evaluate as evaluate
from jaxhp._train import train as train
from jaxhp._version import __version__ as __version__

__all__ = [
    "BayesOptResult",
    "CallbackError",
    "CheckpointLocked",
    "CheckpointMismatch",
    "ChunkDefaults",
    "ChunkRecord",
    "DataError",
    "Distribution",
    "Field",
    "FoldWarning",
    "GPSurrogate",
    "Folds",
    "FormatError",
    "GroupInfo",
    "HParams",
    "HParamsError",
    "HalvingResult",
    "Hypergradient",
    "HypergradientDescentState",
    "Model",
    "ModelError",
    "OptunaResult",
    "PBTResult",
    "Run",
    "Rung",
    "Selection",
    "SelectionError",
    "SettingsTable",
    "Space",
    "SpaceError",
    "Split",
    "SweepResult",
    "SweepWarning",
    "TestReport",
    "TrainState",
    "TuneResult",
    "bayesopt",
    "check_split",
    "choice",
    "chunk_defaults",
    "datasets",
    "evaluate",
    "fixed",
    "grid",
    "hyperband",
    "hyperband_brackets",
    "hypergradient",
    "hypergradient_descent",
    "interop",
    "kfold",
    "intrange",
    "loguniform",
    "models",
    "nn",
    "optuna_search",
    "padded_size",
    "pbt",
    "quasirandom",
    "random",
    "rung_budgets",
    "sample_batch",
    "split_data",
    "stack",
    "standardize",
    "static",
    "successive_halving",
    "sweep",
    "train",
    "tunable",
    "tune_gradient",
    "uniform",
    "unit_mask",
]
