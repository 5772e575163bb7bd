"""Figures of results: look at a sweep, an adaptive search or a descent (``jaxhp[plot]``).

Every function takes a result and ``ax=`` (the matplotlib ``Axes`` to draw on; a new
figure when ``None``) and returns what it drew on (an ``Axes``, or a list of them for
one panel per field). matplotlib is imported inside the functions, never by
``import jaxhp`` or ``import jaxhp.plot``, and this module never chooses a backend:
figures show inline in Jupyter and go to files headless.

The conventions shared by every figure:

- values are validation metrics, aggregated over seeds as selection aggregates them
  (:meth:`~jaxhp.SweepResult.aggregate`): a setting with a diverged or failed seed has
  no value and is drawn apart (a red ``x`` for diverged, a grey square for failed),
  named with its count in the legend;
- colour (and, where the axis is a metric, the worse end of the axis) is limited to
  quantiles of the finite values (:func:`robust_limits`), so a few near-divergent
  settings cannot flatten the scale; the better end is never cut;
- the best setting is the result's own selection (:meth:`~jaxhp.SweepResult.best`,
  the metric's declared direction) and is marked with a star;
- a field declared ``log=True`` is drawn on a log axis.
"""

from jaxhp.plot._adaptive import pbt_lineage as pbt_lineage
from jaxhp.plot._adaptive import pbt_schedule as pbt_schedule
from jaxhp.plot._adaptive import rungs as rungs
from jaxhp.plot._adaptive import trajectories as trajectories
from jaxhp.plot._common import edge_fields as edge_fields
from jaxhp.plot._common import robust_limits as robust_limits
from jaxhp.plot._common import setting_label as setting_label
from jaxhp.plot._sweep import heatmap as heatmap
from jaxhp.plot._sweep import learning_curves as learning_curves
from jaxhp.plot._sweep import metric_by_field as metric_by_field
from jaxhp.plot._sweep import parallel_coordinates as parallel_coordinates

__all__ = [
    "edge_fields",
    "heatmap",
    "learning_curves",
    "metric_by_field",
    "parallel_coordinates",
    "pbt_lineage",
    "pbt_schedule",
    "robust_limits",
    "rungs",
    "setting_label",
    "trajectories",
]
