"""How the stages start TensorFlow (``model_preparation.common.quiet_tensorflow``): without Keras'
optional imports, which no stage uses and which cost every TensorFlow process seconds, and
without taking them from a process that wants them afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import json, sys
from model_preparation.common import quiet_tensorflow
quiet_tensorflow()
hidden = {name: name in sys.modules for name in ("sklearn", "matplotlib")}
import keras, tensorflow as tf
x = keras.layers.Dense(2, kernel_initializer="ones")(tf.ones((1, 3)))
import sklearn.base, matplotlib.pyplot  # still importable afterwards
print(json.dumps({"loaded_by_tf": hidden, "dense": x.numpy().tolist(),
                  "later": [sklearn.base.__name__, matplotlib.pyplot.__name__]}))
"""


def test_tensorflow_starts_without_kerass_optional_imports_which_stay_importable():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["loaded_by_tf"] == {"sklearn": False, "matplotlib": False}
    assert out["dense"] == [[3.0, 3.0]]
    assert out["later"] == ["sklearn.base", "matplotlib.pyplot"]


def test_plain_import_of_tensorflow_loads_them_here():
    """The control: without the function, this environment's Keras does import both (so the
    test above can fail)."""
    probe = (
        "import sys, tensorflow; print(all(n in sys.modules for n in ('sklearn', 'matplotlib')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "True"
