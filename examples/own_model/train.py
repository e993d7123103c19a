"""Train anywhere: here scikit-learn on the rows `linewatch features` wrote, exported with
skl2onnx as it comes (ZipMap included).

    python train.py features.csv model.onnx
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HORIZON = 30  # cycles: the spec's output.horizon

with open(sys.argv[1], newline="") as f:
    rows = list(csv.DictReader(f))
features = [k for k in rows[0] if k not in ("asset", "window_end", "rul")]
X = np.array([[float(r[k]) for k in features] for r in rows], dtype=np.float32)
y = np.array([float(r["rul"]) <= HORIZON for r in rows])
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
with open(sys.argv[2], "wb") as f:
    f.write(to_onnx(model, X[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
