"""The encoding seen per input column: which encoded features each input column makes, and its
part of the log-Jacobian. The encoder maps each input column on its own, so both split
exactly; explanations (:mod:`pipelines.model.explain`) move a column's encoded features
together and add its log-Jacobian term exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.utils.validation import check_is_fitted

from pipelines.tabular.continuous import impute
from pipelines.tabular.encoder import TabularEncoder
from pipelines.tabular.quantile import normal_scores


def feature_sources(encoder: TabularEncoder) -> NDArray[np.int_]:
    """The input column (position in ``feature_names_in_``) each encoded feature comes from: a
    one-hot slot from its categorical column, a missing indicator from its numeric column.
    Encoded features of one input column change together.

    Arguments:
        encoder: a fitted encoder.
    """
    check_is_fitted(encoder)
    schema = encoder.schema_
    position = {name: j for j, name in enumerate(schema.names)}
    sources = [position[spec.name] for spec in encoder.numeric_specs()]
    for spec, (slot_of, missing, unknown) in zip(
        schema.of_kind("categorical"), encoder.onehot_slots_, strict=True
    ):
        # OneHotEncoder writes each column's slots contiguously, in column order.
        n_slots = len({*slot_of.values(), unknown, missing} - {-1})
        sources += [position[spec.name]] * n_slots
    sources += [position[name] for name in encoder.with_missing()]
    return np.array(sources)


def column_log_jacobians(encoder: TabularEncoder, frame: pd.DataFrame) -> NDArray[np.float64]:
    """The log-Jacobian of ``encoder.transform`` (scoring offset) split by input column,
    ``(n, n_features_in_)``; each row sums to ``transform(frame)[1]``: constants under standard
    and robust scaling, ``log dz/dx`` of the value under quantile scaling, and each code
    column's support factor.

    Arguments:
        encoder: a fitted encoder.
        frame: records, checked as by ``transform``.
    """
    check_is_fitted(encoder)
    values = encoder.schema_.check(frame)
    n_out, n_in = encoder.n_features_out_, encoder.n_features_in_
    per_feature = np.zeros((len(frame), n_out))
    n_cont = 0
    if encoder.cont_scaler_ is not None and encoder.cont_imputer_ is not None:
        cont = impute(encoder.continuous_values(values), encoder.cont_imputer_.statistics_)
        n_cont = cont.shape[1]
        if encoder.scaling == "quantile":
            for j, (xk, fk) in enumerate(encoder.quantile_knots_):
                per_feature[:, j] = normal_scores(cont[:, j], xk, fk)[1]
        else:
            per_feature[:, :n_cont] = -np.log(encoder.cont_scaler_.scale_)
    if encoder.code_scaler_ is not None:
        per_feature[:, n_cont:] = -np.log(encoder.code_scaler_.scale_)
    by_column = np.zeros((n_out, n_in))
    by_column[np.arange(n_out), feature_sources(encoder)] = 1.0
    per_column = per_feature @ by_column
    # After the product: -inf (an old encoder's zero density) times the zeros of other columns
    # would be NaN.
    position = {name: j for j, name in enumerate(encoder.schema_.names)}
    code_columns = [position[spec.name]
                    for spec in encoder.schema_.of_kind("discrete", "binary")]
    per_column[:, code_columns] += encoder.support_factors(values)
    return per_column
